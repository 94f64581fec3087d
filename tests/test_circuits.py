"""Path patching, mean-ablated circuits and DCM masks: identities on every family, and hand-built
tiny models whose circuit is known."""

from __future__ import annotations

import pytest
import torch

from conftest import VOCAB, make_tiny_model
from graftlens.interventions.circuits import (
    Circuit,
    CircuitError,
    HeadGroup,
    head_means,
    mean_ablated_logits,
    random_circuit,
)
from graftlens.interventions.masks import DcmSettings, DesideratumBatch, MaskError, desideratum_accuracy, learn_mask
from graftlens.interventions.patches import Patch
from graftlens.interventions.patching import patched_logits
from graftlens.interventions.paths import (
    PathInputs,
    PathPatchingError,
    PathRuns,
    PathStage,
    Receiver,
    head_outputs,
    path_patched_logits,
    path_patched_run,
    path_patching,
    top_heads,
)
from graftlens.interventions.points import Point
from graftlens.models import as_loaded


def _inputs(seed: int = 0, batch: int = 3, length: int = 7) -> PathInputs:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(3, VOCAB, (batch, length), generator=g)
    source = torch.randint(3, VOCAB, (batch, length), generator=g)
    return PathInputs(base, source)


# ---- path patching ------------------------------------------------------------------------------


def test_no_sender_is_the_base_run(family):
    model = make_tiny_model(family)
    inputs = _inputs()
    base, _ = head_outputs(model, inputs.clean_ids, None)
    for receivers in ("logits", [Receiver("q", 2, 1), Receiver("v", 3, 0)]):
        with torch.no_grad():
            out = path_patched_logits(model, inputs, None, receivers=receivers)
        assert torch.equal(out, base)


def test_everything_as_receiver_is_activation_patching_of_the_head(family):
    model = make_tiny_model(family)
    inputs = _inputs(1)
    _, source = head_outputs(model, inputs.corrupted_ids, None)
    for layer, head in [(0, 0), (2, 3)]:
        with torch.no_grad():
            out = path_patched_logits(model, inputs, (layer, head), receivers="everything", sender_positions="LT")
            patch = Patch(Point("z", layer), source[Point("z", layer)], "LT", (head,))
            expected = patched_logits(model, inputs.clean_ids, None, [patch], last_only=True)[:, -1]
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        assert not torch.allclose(out, path_patched_logits(model, inputs, None))  # the patch did something


def test_a_receiver_before_the_sender_receives_nothing(family):
    model = make_tiny_model(family)
    inputs = _inputs(2)
    base, _ = head_outputs(model, inputs.clean_ids, None)
    with torch.no_grad():
        unreached = path_patched_logits(model, inputs, (2, 1), receivers=[Receiver("q", 1, 0), Receiver("k", 2, 0)])
        reached = path_patched_logits(model, inputs, (1, 1), receivers=[Receiver("q", 3, 0)])
    assert torch.equal(unreached, base)
    assert not torch.allclose(reached, base)


def test_path_patching_errors_name_the_culprit():
    model = make_tiny_model("llama")
    inputs = _inputs()
    with pytest.raises(PathPatchingError, match="sender: head 9 out of range"):
        path_patched_logits(model, inputs, (1, 9))
    with pytest.raises(PathPatchingError, match="sender: layer 7 out of range"):
        path_patched_logits(model, inputs, (7, 0))
    with pytest.raises(PathPatchingError, match=r"receiver k\.1\.3: head 3 out of range"):  # 2 KV heads
        path_patched_logits(model, inputs, (0, 0), receivers=[Receiver("k", 1, 3)])
    with pytest.raises(PathPatchingError, match="one row each"):
        PathInputs(inputs.clean_ids, inputs.corrupted_ids[:2])


def _two_head_model(sender=(0, 2), receiver=(1, 1)) -> torch.nn.Module:
    """Two layers, no MLP output, every head's output projection zero but the sender's (layer 0)
    and the receiver's (layer 1): the only paths to the logits are the embeddings, the two heads
    directly, and the sender through the receiver."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    d = 8
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for layer, keep in ((0, sender[1]), (1, receiver[1])):
            o = model.model.layers[layer].self_attn.o_proj.weight  # [d_model, heads * d_head]
            o.mul_(0)
            o[:, keep * d : (keep + 1) * d] = torch.randn(32, d)
            model.model.layers[layer].mlp.down_proj.weight.zero_()
    return model


def test_search_recovers_a_hand_built_two_head_circuit():
    sender, receiver = (0, 2), (1, 1)
    model = _two_head_model(sender, receiver)
    inputs = _inputs(4, batch=6)
    targets = head_outputs(model, inputs.clean_ids, None)[0].argmax(-1)
    direct = path_patching(model, inputs, targets, receivers="logits")
    # (a shared prefix leaves float rounding of ~1e-8 on heads without effect)
    assert {h for h in top_heads(direct.scores.abs(), 8, largest=True) if abs(direct.scores[h]) > 1e-6} == {sender, receiver}
    through_q = path_patching(model, inputs, targets, receivers=[Receiver(p, *receiver) for p in "qkv"])
    nonzero = {(layer, head) for layer in range(2) for head in range(4) if abs(through_q.scores[layer, head]) > 1e-6}
    assert nonzero == {sender}
    assert top_heads(through_q.scores.abs(), 1, largest=True) == [sender]


def test_top_heads_order_and_bounds():
    scores = torch.tensor([[0.0, -0.5, 0.2], [-0.5, 0.1, -0.9]])
    assert top_heads(scores, 3) == [(1, 2), (0, 1), (1, 0)]  # ties by (layer, head)
    assert top_heads(scores, 2, largest=True) == [(0, 2), (1, 1)]
    with pytest.raises(PathPatchingError, match="cannot pick 7 heads among 6"):
        top_heads(scores, 7)


# ---- mean-ablated circuits ----------------------------------------------------------------------


def _equal_length_batches(seed=0, n=4, batch=3, length=6):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, VOCAB, (batch, length), generator=g), None) for _ in range(n)]


def test_keeping_every_head_everywhere_is_the_full_model(family):
    model = make_tiny_model(family)
    a = as_loaded(model).adapter
    means = head_means(model, _equal_length_batches())
    ids = _equal_length_batches(1, n=1)[0][0]
    full = Circuit({"all": HeadGroup(tuple((la, h) for la in range(a.n_layers) for h in range(a.n_heads)), "all")})
    with torch.no_grad():
        kept = mean_ablated_logits(model, ids, None, full, means)
        plain = head_outputs(model, ids, None)[0]
        none = mean_ablated_logits(model, ids, None, None, means)
    assert torch.equal(kept, plain) and torch.equal(none, plain)


def test_an_empty_circuit_is_the_mean_output_model(family):
    model = make_tiny_model(family)
    a = as_loaded(model).adapter
    reference = _equal_length_batches()
    means = head_means(model, reference)
    # the means, computed here independently of head_means
    from graftlens.interventions.hooks import capture

    zs = {layer: [] for layer in range(a.n_layers)}
    for ids, _ in reference:
        with torch.no_grad(), capture(model, [Point("z", la) for la in range(a.n_layers)]) as cache:
            model(input_ids=ids)
        for la in zs:
            zs[la].append(cache[Point("z", la)])
    expected_means = {la: torch.cat(v).mean(0) for la, v in zs.items()}
    for la in zs:
        torch.testing.assert_close(means[la], expected_means[la])
    ids = _equal_length_batches(1, n=1)[0][0]
    from graftlens.interventions.hooks import edit

    with torch.no_grad():
        empty = mean_ablated_logits(model, ids, None, Circuit({}), means)
        with edit(model, {Point("z", la): (lambda m: lambda z: m.expand_as(z))(expected_means[la]) for la in zs}):
            mean_model = model(input_ids=ids).logits[:, -1]
    torch.testing.assert_close(empty, mean_model, rtol=1e-5, atol=1e-5)


def test_a_kept_head_keeps_its_own_output_only_at_its_positions():
    model = make_tiny_model("llama")
    means = head_means(model, _equal_length_batches())
    ids = _equal_length_batches(2, n=1)[0][0]
    circuit = Circuit({"vf": HeadGroup(((3, 1),), "LT")})
    from graftlens.interventions.circuits import mean_ablation_edits
    from graftlens.interventions.hooks import capture, edit

    with torch.no_grad():
        plain = head_outputs(model, ids, None)[1]
        edits = mean_ablation_edits(4, 4, circuit, means, torch.ones_like(ids))
        with edit(model, edits), capture(model, [Point("z", 3)]) as cache:
            model(input_ids=ids)
    z = cache[Point("z", 3)]
    # head 1 at the last position: its own output (computed from ablated inputs, so not the plain one)
    assert not torch.allclose(z[:, -1, 1], means[3][-1, 1].expand_as(z[:, -1, 1]))
    torch.testing.assert_close(z[:, :-1, 1], means[3][:-1, 1].expand_as(z[:, :-1, 1]))  # elsewhere: its mean
    torch.testing.assert_close(z[:, :, 0], means[3][:, 0].expand_as(z[:, :, 0]))  # other heads: their means
    assert plain[Point("z", 3)].shape == z.shape


def test_circuit_errors():
    model = make_tiny_model("llama")
    means = head_means(model, _equal_length_batches())
    ids = _equal_length_batches(1, n=1)[0][0]
    with pytest.raises(CircuitError, match=r"group 'vf': heads \[\(0, 4\)\] out of range"):
        mean_ablated_logits(model, ids, None, Circuit({"vf": HeadGroup(((0, 4),), "LT")}), means)
    with pytest.raises(CircuitError, match="the circuit has no group 'movers'"):
        Circuit({"vf": HeadGroup(((0, 1),), "LT")}).group("movers")
    with pytest.raises(CircuitError, match="6-token prompts; these prompts have \\[8\\] tokens"):
        mean_ablated_logits(model, torch.randint(3, VOCAB, (2, 8)), None, Circuit({}), means)
    with pytest.raises(CircuitError, match="one length"):
        head_means(model, [(torch.randint(3, VOCAB, (2, 5)), None), (torch.randint(3, VOCAB, (2, 6)), None)])
    with pytest.raises(CircuitError, match="names a head twice"):
        HeadGroup(((0, 1), (0, 1)), "LT")
    with pytest.raises(CircuitError, match="not a circuit"):
        Circuit.from_json({"vf": {"heads": [[0, 1]]}})


def test_random_circuits_keep_sizes_draw_without_repeats_and_are_seeded():
    circuit = Circuit({"a": HeadGroup(tuple((0, h) for h in range(9)), "LT"), "b": HeadGroup(((1, 1), (2, 2)), "query")})
    n_layers, n_heads = 3, 4  # fewer layers than heads: the released code's decoding would go wrong
    draws = [random_circuit(circuit, n_layers, n_heads, seed) for seed in range(50)]
    for r in draws:
        assert [len(g.heads) for g in r.groups.values()] == [9, 2]
        assert [g.positions for g in r.groups.values()] == ["LT", "query"]
        for g in r.groups.values():
            assert len(set(g.heads)) == len(g.heads)
            assert all(0 <= la < n_layers and 0 <= h < n_heads for la, h in g.heads)
    assert random_circuit(circuit, n_layers, n_heads, 7) == draws[7]
    assert len({r.groups["a"].heads for r in draws}) > 40
    seen = {h for r in draws for h in r.groups["a"].heads}
    assert seen == {(la, h) for la in range(n_layers) for h in range(n_heads)}  # every head can be drawn
    with pytest.raises(CircuitError, match="has 9 heads; the model has only 4"):
        random_circuit(circuit, 1, 4, 0)
    assert Circuit.from_json(circuit.to_json()) == circuit


# ---- DCM ----------------------------------------------------------------------------------------


def _one_carrier_model(carrier=(1, 2)) -> torch.nn.Module:
    """Every output projection zero but ``carrier``'s, no MLP output: at the last position the
    base and source runs differ only by the carrier's output (both end in the same token)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for layer in range(2):
            o = model.model.layers[layer].self_attn.o_proj.weight
            o.zero_()
            model.model.layers[layer].mlp.down_proj.weight.zero_()
        model.model.layers[carrier[0]].self_attn.o_proj.weight[:, carrier[1] * 8 : (carrier[1] + 1) * 8] = torch.randn(32, 8) * 3
    return model


def _carrier_batches(model, n_batches=3, batch=16):
    out = []
    g = torch.Generator().manual_seed(11)
    for _ in range(n_batches):
        base = torch.randint(3, VOCAB, (batch, 6), generator=g)
        source = torch.randint(3, VOCAB, (batch, 6), generator=g)
        source[:, -1] = base[:, -1]
        answer = head_outputs(model, source, None)[0].argmax(-1)  # the source's answer
        out.append(DesideratumBatch(PathInputs(base, source), answer))
    return out


def test_dcm_finds_the_one_head_that_carries_the_desideratum():
    carrier = (1, 2)
    model = _one_carrier_model(carrier)
    batches = _carrier_batches(model)
    candidates = [(layer, head) for layer in range(2) for head in range(4)]
    assert desideratum_accuracy(model, batches, [carrier]) == 1.0  # patching the carrier alone realises it
    assert desideratum_accuracy(model, batches, []) < 0.3
    learned = learn_mask(model, batches, candidates, DcmSettings(epochs=15))
    assert learned.selected == [carrier]
    assert learned.losses[-1] < learned.losses[0]
    assert all(p.requires_grad for p in model.parameters())  # the model's own flags are restored
    assert all(p.grad is None for p in model.parameters())


def test_dcm_errors():
    model = _one_carrier_model()
    batches = _carrier_batches(model, 1, 4)
    with pytest.raises(MaskError, match="head 2.0 out of range"):
        learn_mask(model, batches, [(2, 0)], DcmSettings(epochs=1))
    with pytest.raises(MaskError, match="repeat"):
        learn_mask(model, batches, [(0, 0), (0, 0)], DcmSettings(epochs=1))
    with pytest.raises(MaskError, match="at least one"):
        learn_mask(model, batches, [], DcmSettings(epochs=1))


def _padded_pairs(g: torch.Generator, width: int, padded_row: int, padding: int, queries: tuple[int, ...]) -> PathInputs:
    """Three random base/source rows of ``width`` columns, one of them left-padded, each with a
    one-token ``query`` span (prompt coordinates) at ``queries[row]``."""
    base = torch.randint(3, VOCAB, (3, width), generator=g)
    source = torch.randint(3, VOCAB, (3, width), generator=g)
    mask = torch.ones_like(base)
    mask[padded_row, :padding] = 0
    spans = [{"query": (q, q + 1)} for q in queries]
    return PathInputs(base, source, mask, mask, spans, spans)


def test_a_shared_prefix_gives_the_full_path_patching(family):
    from graftlens.interventions.paths import PreparedBatch, first_touched_column, target_probs

    model = make_tiny_model(family)
    g = torch.Generator().manual_seed(8)
    inputs = _padded_pairs(g, 9, padded_row=0, padding=2, queries=(4, 6, 5))
    targets = torch.randint(3, VOCAB, (3,), generator=g)
    for positions, receivers, receiver_positions in [
        ("LT", "logits", "LT"),
        ("LT", [Receiver("q", 3, 1), Receiver("k", 2, 0)], "LT"),
        ("query", [Receiver("v", 3, 0)], "query"),
    ]:
        assert first_touched_column(inputs, positions, receivers, receiver_positions) > 0
        kw = dict(sender_positions=positions, receivers=receivers, receiver_positions=receiver_positions)
        shared = path_patching(model, inputs, targets, senders=[(0, 1), (1, 3), (2, 0)], **kw)
        unshared = PreparedBatch(model, inputs, share_prefix=False, **kw)
        full_prob = target_probs(unshared.clean_logits, targets)
        for layer, head in [(0, 1), (1, 3), (2, 0)]:
            p = target_probs(unshared.logits((layer, head)), targets)
            torch.testing.assert_close(shared.scores[layer, head], ((p - full_prob) / full_prob).mean(), rtol=1e-4, atol=1e-5)
        assert shared.scores.abs().sum() > 0


def test_the_one_column_sender_run_gives_the_full_sender_run(family):
    model = make_tiny_model(family)
    g = torch.Generator().manual_seed(9)
    inputs = _padded_pairs(g, 8, padded_row=1, padding=3, queries=(4, 2, 6))  # position ids ≠ column numbers
    cases = [
        ("LT", "logits", "LT"),
        ("LT", [Receiver("q", 3, 2)], "LT"),
        ("query", [Receiver("v", 3, 0), Receiver("k", 2, 0)], "query"),
    ]
    with torch.no_grad():
        for positions, receivers, receiver_positions in cases:
            for sender in [(0, 1), (2, 3)]:
                kw = dict(sender_positions=positions, receivers=receivers, receiver_positions=receiver_positions)
                one = path_patched_logits(model, inputs, sender, **kw)
                stage = PathStage(positions, None, receivers, receiver_positions)
                full = path_patched_run(as_loaded(model), inputs, sender, stage, PathRuns(one_column=False))
                torch.testing.assert_close(one, full, rtol=1e-4, atol=1e-5)
                assert not torch.allclose(full, path_patched_logits(model, inputs, None, **kw))


def test_masked_patching_over_a_shared_prefix_gives_the_full_pass_and_its_gradient(family):
    from graftlens.interventions.masks import _masked_patch_logits, _prepare

    model = make_tiny_model(family)
    g = torch.Generator().manual_seed(12)
    batch = DesideratumBatch(_padded_pairs(g, 8, padded_row=2, padding=2, queries=(5, 6, 4)), torch.tensor([5, 6, 7]))
    heads = [(1, 0), (2, 3), (3, 1)]
    corrupted_cache, prefix = _prepare(as_loaded(model), batch, "query")
    assert prefix is not None
    grads = []
    for shared in (True, False):
        m = torch.full((3,), 0.7, requires_grad=True)
        kw = dict(corrupted_cache=corrupted_cache, prefix=prefix) if shared else {}
        out = _masked_patch_logits(model, batch, heads, m, "query", grad=True, **kw)
        out.logsumexp(-1).sum().backward()
        grads.append((out.detach(), m.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-3, atol=1e-5)
    assert grads[1][1].abs().sum() > 0
