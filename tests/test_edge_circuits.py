"""Edge circuits (every edge outside a circuit mean-ablated) on tiny models of every family:
the identities that pin the definition down, and the one-pass engine against a literal
reference that reaches the same run by repeated passes, sender by sender, receiver by receiver."""

from __future__ import annotations

import random

import pytest
import torch

import graftlens
from graftlens.interventions.circuits import Circuit, CircuitError, HeadGroup, head_means, mean_ablated_logits
from graftlens.interventions.edge_circuits import EdgeCircuit, edge_ablated_logits, edges_for_heads
from graftlens.interventions.edges import LOGITS, edge_attribution, receiver_input
from graftlens.interventions.hooks import capture, edit
from graftlens.interventions.paths import PathInputs, Receiver
from graftlens.interventions.points import Point
from graftlens.models import tiny_model
from graftlens.models.run import run_logits

FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gemma2", "olmo2", "phi3", "gpt2", "gpt_neox"]


def _double(family: str, seed: int = 1):
    m = tiny_model(family, seed=seed)
    m.model.double()
    return m


def _prompts(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 90, (3, 6), generator=torch.Generator().manual_seed(seed))


def _means(m, seed: int = 5):
    return head_means(m, [(_prompts(seed), None)])


def _all_heads(a) -> list[tuple[int, int]]:
    return [(layer, h) for layer in range(a.n_layers) for h in range(a.n_heads)]


def _every_edge(a) -> list:
    group = a.n_heads // a.n_kv_heads
    edges = [(s, LOGITS) for s in _all_heads(a)]
    for s in _all_heads(a):
        for layer in range(s[0] + 1, a.n_layers):
            edges += [(s, Receiver("q", layer, h)) for h in range(a.n_heads)]
            edges += [(s, Receiver(p, layer, kv)) for p in ("k", "v") for kv in range(a.n_heads // group)]
    return edges


def literal_edge_ablated_logits(m, ids, circuit: EdgeCircuit, means) -> torch.Tensor:
    """The definition, run by fixed-point passes: each pass reads the previous pass's head
    outputs and streams; layer ``l`` is right after ``l + 1`` passes. Each sender's write is
    made on its own (o of z with that head at its mean, minus o of z, through any output
    norm), and each receiver's input on its own."""
    a = m.adapter
    group = a.n_heads // a.n_kv_heads
    alive = set(circuit.heads(a.n_layers, a.n_heads, a.n_kv_heads))
    n = means[0].shape[0]
    last = Point("resid_post", a.n_layers - 1)

    def write(z_layer, layer, head):  # [batch, pos, d_model]
        o_proj = m.model.get_submodule(a.sites("o", layer)[0].path)
        norm_path = a.family.attn_out_norm
        norm = m.model.get_submodule(f"{a.family.layers}.{layer}.{norm_path}") if norm_path else (lambda x: x)
        moved = z_layer.clone()
        moved[:, -n:, head] = means[layer][:, head]
        return norm(o_proj(moved.flatten(-2))) - norm(o_proj(z_layer.flatten(-2)))

    def ablate(layer):
        def fn(z):
            out = z.clone()
            for h in range(a.n_heads):
                if (layer, h) not in alive:
                    out[:, -n:, h] = means[layer][:, h]
            return out

        return fn

    previous = None
    for _ in range(a.n_layers + 1):
        edits = {Point("z", layer): ablate(layer) for layer in range(a.n_layers)}
        if previous is not None:  # every receiver's input and the logits' stream, from the last pass (no hook runs here)
            with torch.no_grad():
                values = _receiver_values(m, previous, circuit, alive, write, group)
                extra = sum(
                    (write(previous[Point("z", s[0])], *s) for s in sorted(alive) if (s, LOGITS) not in circuit.edges),
                    torch.zeros(()),
                )
            for layer in range(a.n_layers):
                for p in ("q", "k", "v"):
                    edits[Point(p, layer)] = _swap(values, layer, p)
            edits[last] = lambda x, extra=extra: x + extra
        wanted = [Point(p, layer) for layer in range(a.n_layers) for p in ("z", "resid_pre")]
        with torch.no_grad(), edit(m, edits), capture(m, wanted) as cache:
            logits = run_logits(m, ids, last_only=True)[:, -1]
        previous = cache
    return logits


def _receiver_values(m, prev, circuit, alive, write, group) -> dict:
    """``{(layer, point, head): [batch, pos, d_head]}``, each receiver's input made on its own."""
    a = m.adapter
    out = {}
    for layer in range(a.n_layers):
        for point in ("q", "k", "v"):
            for h in range(a.n_heads if point == "q" else a.n_kv_heads):
                heads = [(layer, h)] if point == "q" else [(layer, q) for q in range(h * group, (h + 1) * group)]
                if not any(q in alive for q in heads):
                    continue
                stream = prev[Point("resid_pre", layer)].clone()
                for s in sorted(alive):
                    if s[0] < layer and (s, Receiver(point, layer, h)) not in circuit.edges:
                        stream = stream + write(prev[Point("z", s[0])], *s)
                out[(layer, point, h)] = receiver_input(m, layer, stream)[point][:, :, h]
    return out


def _swap(values, layer, point):
    def fn(x):
        out = x.clone()
        for (lay, p, h), value in values.items():
            if (lay, p) == (layer, point):
                out[:, :, h] = value
        return out

    return fn


@pytest.mark.parametrize("family", FAMILIES)
def test_every_edge_is_the_model_and_no_edge_ablates_every_head(family):
    m = _double(family)
    a = m.adapter
    ids, means = _prompts(), _means(m)
    every = edge_ablated_logits(m, ids, None, EdgeCircuit(_every_edge(a)), means)
    assert torch.allclose(every, run_logits(m, ids, last_only=True)[:, -1], atol=1e-10, rtol=0)
    none = edge_ablated_logits(m, ids, None, EdgeCircuit([]), means)
    assert torch.allclose(none, mean_ablated_logits(m, ids, None, Circuit({}), means), atol=1e-10, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_complete_subgraph_is_the_node_circuit(family):
    m = _double(family)
    a = m.adapter
    ids, means = _prompts(1), _means(m)
    heads = sorted(random.Random(3).sample(_all_heads(a), 6))
    edges = edge_ablated_logits(m, ids, None, EdgeCircuit.complete(heads, a.n_heads, a.n_kv_heads), means)
    nodes = mean_ablated_logits(m, ids, None, Circuit({"c": HeadGroup(tuple(heads), "all")}), means)
    assert torch.allclose(edges, nodes, atol=1e-10, rtol=0)
    plain = run_logits(m, ids, last_only=True)[:, -1]
    assert not torch.allclose(edges, plain, atol=1e-4)  # the ablation did something


@pytest.mark.parametrize("family", FAMILIES)
def test_the_engine_is_the_literal_definition(family):
    m = _double(family)
    a = m.adapter
    ids, means = _prompts(2), _means(m)
    every = _every_edge(a)
    sample = random.Random(7).sample(every, int(0.6 * len(every)))
    kept = EdgeCircuit(e for e in sample if e[0] not in ((0, 0), (1, 2)))  # two heads send nothing: outside the circuit
    assert 0 < len(kept.heads(a.n_layers, a.n_heads, a.n_kv_heads)) < a.n_layers * a.n_heads
    fast = edge_ablated_logits(m, ids, None, kept, means)
    literal = literal_edge_ablated_logits(m, ids, kept, means)
    assert torch.allclose(fast, literal, atol=1e-9, rtol=0), (fast - literal).abs().max()
    assert not torch.allclose(fast, run_logits(m, ids, last_only=True)[:, -1], atol=1e-4)


def test_one_edge_cut_from_every_edge_moves_the_logits_as_the_definition_says():
    m = _double("llama")
    a = m.adapter
    ids, means = _prompts(3), _means(m)
    every = _every_edge(a)
    plain = run_logits(m, ids, last_only=True)[:, -1]
    cut = [e for e in every if e != ((0, 1), Receiver("q", 3, 2))]
    moved = edge_ablated_logits(m, ids, None, EdgeCircuit(cut), means)
    assert not torch.allclose(moved, plain, atol=1e-8)
    assert torch.allclose(moved, literal_edge_ablated_logits(m, ids, EdgeCircuit(cut), means), atol=1e-10, rtol=0)


def test_padding_and_chunks_change_nothing(monkeypatch):
    import graftlens.interventions.edge_circuits as ec

    m = _double("qwen2")
    a = m.adapter
    ids, means = _prompts(4), _means(m)
    kept = EdgeCircuit(random.Random(1).sample(_every_edge(a), 150))
    whole = edge_ablated_logits(m, ids, None, kept, means)
    padded = torch.cat([torch.zeros(3, 2, dtype=ids.dtype), ids], 1)
    mask = torch.cat([torch.zeros(3, 2, dtype=torch.long), torch.ones_like(ids)], 1)
    assert torch.allclose(edge_ablated_logits(m, padded, mask, kept, means), whole, atol=1e-9, rtol=0)
    monkeypatch.setattr(ec, "WRITES_BUDGET", 1)  # one prompt at a time
    assert torch.allclose(edge_ablated_logits(m, ids, None, kept, means), whole, atol=1e-12, rtol=0)


def test_heads_in_the_circuit_are_those_that_reach_the_logits():
    to_q = ((0, 0), Receiver("q", 2, 1))
    assert EdgeCircuit([to_q]).heads(4, 4, 2) == []  # (2, 1) reaches nothing: neither does (0, 0)
    assert EdgeCircuit([to_q, ((2, 1), LOGITS)]).heads(4, 4, 2) == [(0, 0), (2, 1)]
    to_kv = ((1, 3), Receiver("v", 3, 0))  # KV head 0 of layer 3 serves query heads 0 and 1
    assert EdgeCircuit([to_kv, ((3, 1), LOGITS)]).heads(4, 4, 2) == [(1, 3), (3, 1)]
    assert EdgeCircuit([to_kv, ((3, 2), LOGITS)]).heads(4, 4, 2) == [(3, 2)]


def test_edges_for_heads_are_the_shortest_prefix_holding_that_many_heads():
    m = tiny_model("llama")
    a = m.adapter
    clean = _prompts(6)
    corrupted = clean.clone()
    corrupted[:, 2] += 1
    scores = edge_attribution(m, PathInputs(clean, corrupted), torch.tensor([3, 4, 5]))
    ranked = [(s, r) for s, r, _ in scores.top_edges(int(scores.valid.sum()))]
    for k in (1, 3, 8, 16):
        circuit = edges_for_heads(scores, k)
        n = len(circuit.edges)
        assert circuit.edges == frozenset(ranked[:n])
        assert len(circuit.heads(a.n_layers, a.n_heads, a.n_kv_heads)) >= k
        assert len(EdgeCircuit(ranked[: n - 1]).heads(a.n_layers, a.n_heads, a.n_kv_heads)) < k
    with pytest.raises(CircuitError, match="17 heads"):
        edges_for_heads(scores, 17)


def test_bad_input_is_one_clear_error():
    m = tiny_model("llama")
    ids = _prompts()
    means = _means(m)
    with pytest.raises(CircuitError, match="later layer"):
        edge_ablated_logits(m, ids, None, EdgeCircuit([((2, 0), Receiver("q", 1, 0))]), means)
    with pytest.raises(CircuitError, match="no such head"):
        edge_ablated_logits(m, ids, None, EdgeCircuit([((9, 0), LOGITS)]), means)
    with pytest.raises(CircuitError, match="6-token prompts"):
        edge_ablated_logits(m, ids[:, :4], None, EdgeCircuit([]), means)
    assert graftlens.EdgeCircuit is EdgeCircuit and graftlens.edge_ablated_logits is edge_ablated_logits
