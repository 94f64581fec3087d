"""Edge attribution patching against exact edge patching, on tiny models of every family.

EAP is a first-order estimate: with the sender's output moved a small ``scale`` of the way to the
corrupted run's, exact edge patching divided by ``scale`` must match the EAP score divided by
``scale`` (float64 models; HF's RMSNorms compute in float32, which bounds the agreement near
1e-3 of the largest score). At ``scale = 1`` (the edge patched whole) only the ranking is
expected to agree: Spearman's correlation is checked on every family.
"""

from __future__ import annotations

import random

import pytest
import torch

import graftlens
from graftlens.interventions import edges as ea  # the module
from graftlens.interventions.edges import (
    LOGITS,
    EdgeAttributionError,
    edge_attribution,
    edge_effect,
    edge_patched_logits,
    rank_correlation,
)
from graftlens.interventions.paths import PathInputs, Receiver
from graftlens.models import tiny_model
from graftlens.models.run import run_logits

FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gemma2", "olmo2", "phi3", "gpt2", "gpt_neox"]
SCALE = 1e-3


def _inputs(seed: int = 0, pad: bool = False) -> tuple[PathInputs, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 90, (3, 7), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(3, 90, (3,), generator=g)
    corrupted[:, 4] = torch.randint(3, 90, (3,), generator=g)
    mask = torch.ones_like(clean)
    if pad:
        mask[0, :2] = 0
    return PathInputs(clean, corrupted, mask, mask), torch.tensor([3, 4, 5])


def _double(family: str, seed: int = 1):
    m = tiny_model(family, seed=seed)
    m.model.double()
    return m


def _sample_edges(scores: ea.EdgeScores, n: int, seed: int) -> list[tuple[int, int]]:
    idx = [tuple(x) for x in scores.valid.nonzero().tolist()]
    random.Random(seed).shuffle(idx)
    logits = [(i, len(scores.receivers) - 1) for i in range(0, len(scores.senders), 5)]
    return idx[:n] + logits


@pytest.mark.parametrize("family", FAMILIES)
def test_eap_is_the_first_order_of_exact_edge_patching(family):
    m = _double(family)
    inputs, target = _inputs()
    small, _ = ea._attribute(m, inputs, target, 1, SCALE)
    edges = _sample_edges(edge_attribution(m, inputs, target), 30, seed=0)
    estimate = torch.tensor([float(small[i, j]) / SCALE for i, j in edges])
    full = edge_attribution(m, inputs, target)
    exact = torch.tensor([edge_effect(m, inputs, target, full.senders[i], full.receivers[j], SCALE) / SCALE for i, j in edges])
    assert exact.abs().max() > 1e-4  # the edges sampled do move the metric
    assert (estimate - exact).abs().max() <= 2e-2 * exact.abs().max(), (estimate, exact)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_patch_ranks_agree(family):
    m = _double(family)
    inputs, target = _inputs(seed=2)
    eap = edge_attribution(m, inputs, target)
    edges = _sample_edges(eap, 30, seed=1)
    exact = [edge_effect(m, inputs, target, eap.senders[i], eap.receivers[j]) for i, j in edges]
    assert rank_correlation([float(eap.scores[i, j]) for i, j in edges], exact) > 0.8


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_node_scores_are_the_first_order_of_patching_a_head(family):
    m = _double(family)
    inputs, target = _inputs(seed=3)
    eap = edge_attribution(m, inputs, target)
    with graftlens.capture(m, [f"z.{layer}" for layer in range(4)]) as clean:
        run_logits(m, inputs.clean_ids)
    with graftlens.capture(m, [f"z.{layer}" for layer in range(4)]) as corrupted:
        run_logits(m, inputs.corrupted_ids)
    base = ea._metric(run_logits(m, inputs.clean_ids, last_only=True)[:, -1], target)
    worst = 0.0
    for layer, head in [(0, 1), (1, 3), (2, 0), (3, 2)]:

        def nudge(z, layer=layer, head=head):
            out = z.clone()
            out[:, :, head] += SCALE * (corrupted[f"z.{layer}"] - clean[f"z.{layer}"])[:, :, head]
            return out

        with graftlens.edit(m, {f"z.{layer}": nudge}):
            moved = ea._metric(run_logits(m, inputs.clean_ids, last_only=True)[:, -1], target)
        worst = max(worst, abs(float(moved - base) / SCALE - float(eap.node_scores[layer, head])))
    assert worst <= 2e-2 * float(eap.node_scores.abs().max())


def test_padding_and_chunks_change_nothing(monkeypatch):
    m = tiny_model("llama", seed=1)
    inputs, target = _inputs(seed=4)
    whole = edge_attribution(m, inputs, target)
    padded = PathInputs(
        torch.cat([torch.zeros(3, 2, dtype=torch.long), inputs.clean_ids], 1),
        torch.cat([torch.zeros(3, 2, dtype=torch.long), inputs.corrupted_ids], 1),
        torch.cat([torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 7, dtype=torch.long)], 1),
        torch.cat([torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 7, dtype=torch.long)], 1),
    )
    assert torch.allclose(edge_attribution(m, padded, target).scores, whole.scores, atol=1e-5)
    monkeypatch.setattr(ea, "WRITES_BUDGET", 1)  # one prompt per chunk
    chunked = edge_attribution(m, inputs, target)
    assert torch.allclose(chunked.scores, whole.scores, atol=1e-6)
    assert torch.allclose(chunked.node_scores, whole.node_scores, atol=1e-6)


def test_patching_a_run_into_itself_changes_nothing():
    m = tiny_model("gpt2")
    inputs, target = _inputs()
    same = PathInputs(inputs.clean_ids, inputs.clean_ids)
    eap = edge_attribution(m, same, target, steps=3)
    assert torch.equal(eap.scores, torch.zeros_like(eap.scores))
    assert torch.equal(eap.node_scores, torch.zeros_like(eap.node_scores))
    plain = run_logits(m, inputs.clean_ids, last_only=True)[:, -1]
    assert torch.allclose(edge_patched_logits(m, same, (1, 2), Receiver("k", 3, 1)), plain, atol=1e-6)
    assert torch.allclose(edge_patched_logits(m, same, (3, 0), LOGITS), plain, atol=1e-6)


def test_integrated_gradients_average_the_path():
    """EAP-IG with two steps takes the mean of the gradients at the clean run and halfway there."""
    m = tiny_model("llama", seed=2)
    inputs, target = _inputs(seed=5)
    assert not torch.allclose(edge_attribution(m, inputs, target).scores, edge_attribution(m, inputs, target, steps=2).scores)
    _, at_clean = ea._gradients(m, inputs, target, 1)
    _, two = ea._gradients(m, inputs, target, 2)
    embed = m.model.get_submodule("model.embed_tokens")
    held = {}
    h = embed.register_forward_hook(lambda mod, i, o: held.__setitem__("e", o.detach()))
    run_logits(m, inputs.corrupted_ids)
    h.remove()
    halfway = embed.register_forward_hook(lambda mod, i, o: held["e"] + 0.5 * (o - held["e"]))
    try:
        _, at_half = ea._gradients(m, inputs, target, 1)
    finally:
        halfway.remove()
    for point, g in two.items():
        assert torch.allclose(g, (at_clean[point] + at_half[point]) / 2, atol=1e-6), point


def test_rankings():
    m = tiny_model("llama")
    inputs, target = _inputs()
    eap = edge_attribution(m, inputs, target)
    top = eap.top_edges(10)
    assert [abs(s) for *_, s in top] == sorted((abs(s) for *_, s in top), reverse=True)
    negative = eap.top_edges(10, by="negative")
    assert [s for *_, s in negative] == sorted(s for *_, s in negative)
    for sender, receiver, _ in top:
        assert receiver == LOGITS or sender[0] < receiver.layer
    heads = eap.heads_by_edges()
    assert sorted(heads) == [(layer, h) for layer in range(4) for h in range(4)]
    assert heads[0] == top[0][0]
    nodes = eap.heads_by_nodes()
    assert abs(float(eap.node_scores[nodes[0]])) == float(eap.node_scores.abs().max())
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_bad_input_is_one_clear_error():
    m = tiny_model("llama")
    inputs, target = _inputs()
    with pytest.raises(EdgeAttributionError, match="same shape"):
        edge_attribution(m, PathInputs(inputs.clean_ids, inputs.corrupted_ids[:, 1:]), target)
    with pytest.raises(EdgeAttributionError, match="steps"):
        edge_attribution(m, inputs, target, steps=0)
    with pytest.raises(graftlens.InterventionError, match="2 entries"):
        edge_attribution(m, inputs, target[:2])
    with pytest.raises(EdgeAttributionError, match="later layer"):
        edge_patched_logits(m, inputs, (2, 0), Receiver("q", 2, 0))
    with pytest.raises(EdgeAttributionError, match="no such head"):
        edge_patched_logits(m, inputs, (9, 0), LOGITS)
    with pytest.raises(EdgeAttributionError, match="cannot pick"):
        edge_attribution(m, inputs, target).top_edges(10_000)


def test_shared_runs_patch_each_edge_as_alone():
    m = tiny_model("phi3", seed=3)
    inputs, target = _inputs(seed=6)
    runs = ea.ExactEdges(m, inputs)
    for sender, receiver in [((0, 1), Receiver("q", 2, 3)), ((1, 0), Receiver("v", 3, 1)), ((2, 2), LOGITS)]:
        alone = edge_patched_logits(m, inputs, sender, receiver)
        assert torch.allclose(runs.logits(sender, receiver), alone, atol=1e-6)
        assert runs.effect(target, sender, receiver) == pytest.approx(edge_effect(m, inputs, target, sender, receiver), abs=1e-6)
    few = ea.ExactEdges(m, inputs, layers=[0])
    with pytest.raises(EdgeAttributionError, match="not kept"):
        few.logits((0, 1), Receiver("q", 2, 3))
