"""Edge circuits: a set of edges of the head graph kept, every other edge mean-ablated.

The graph is edge attribution's (`edges`): a sender
head reaches a later head's query, key or value input, or the logits. An `EdgeCircuit`
keeps some edges. Running it (`edge_ablated_logits`):

- a receiver (a head's q, k or v, or the logits) reads the residual stream of the circuit run
  plus, for every sender whose edge to it is *not* kept, that sender's write when its output
  is set to its mean (`head_writes`): the
  receiver alone sees that sender mean-ablated;
- a head with no path of kept edges to the logits outputs its mean (it is not in the circuit);
- MLPs, norms and embeddings are not nodes of the graph: they read the circuit run's residual
  stream as it is.

So keeping every edge is the model, keeping none mean-ablates every head, and keeping every edge
among some heads (and theirs to the logits, `EdgeCircuit.complete`) is the node circuit of
those heads (`mean_ablated_logits` at every position).
Means are per position, as `head_means` takes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from graftlens.interventions.circuits import CircuitError
from graftlens.interventions.edges import (
    LOGITS,
    RECEIVER_POINTS,
    WRITES_BUDGET,
    EdgeReceiver,
    EdgeScores,
    head_writes,
    receiver_input,
)
from graftlens.interventions.hooks import edit
from graftlens.interventions.paths import Receiver
from graftlens.interventions.points import Point
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.names import Head
from graftlens.models.run import run_logits

Edge = tuple[Head, EdgeReceiver]


@dataclass(frozen=True)
class EdgeCircuit:
    """The edges kept: ``(sender head, receiver)`` pairs, a receiver being a
    `Receiver` (a later head's q, k or v; a key/value head under GQA) or
    ``"logits"``.

    Args:
        edges: ``(sender head, receiver)`` pairs.

    Examples:
        >>> from graftlens import EdgeCircuit, Receiver
        >>> circuit = EdgeCircuit.complete([(0, 1), (2, 0)], n_heads=4, n_kv_heads=2)
        >>> sorted(map(str, (r for _, r in circuit.edges)))
        ['k.2.0', 'logits', 'logits', 'q.2.0', 'v.2.0']
        >>> circuit.heads(n_layers=4, n_heads=4, n_kv_heads=2)
        [(0, 1), (2, 0)]
    """

    edges: frozenset[Edge]

    def __init__(self, edges: Iterable[Edge]) -> None:
        object.__setattr__(self, "edges", frozenset(edges))

    @classmethod
    def top(cls, scores: EdgeScores, k: int, by: str = "abs") -> EdgeCircuit:
        """The first ``k`` edges of ``scores``' ranking (`EdgeScores.top_edges`)."""
        return cls((s, r) for s, r, _ in scores.top_edges(k, by))  # type: ignore[arg-type]

    @classmethod
    def complete(cls, heads: Iterable[Head], n_heads: int, n_kv_heads: int) -> EdgeCircuit:
        """Every edge among ``heads`` and from each of them to the logits: the node circuit of
        those heads, as edges (a key/value receiver is kept when one of its query heads is in)."""
        heads = sorted(set(heads))
        group = n_heads // n_kv_heads
        edges: list[Edge] = [(s, LOGITS) for s in heads]
        for s in heads:
            for layer, h in heads:
                if layer > s[0]:
                    edges.append((s, Receiver("q", layer, h)))
                    edges += [(s, Receiver(p, layer, h // group)) for p in ("k", "v")]
        return cls(edges)

    def heads(self, n_layers: int, n_heads: int, n_kv_heads: int) -> list[Head]:
        """The heads in the circuit: those with a path of kept edges to the logits."""
        group = n_heads // n_kv_heads
        out_edges: dict[Head, list[EdgeReceiver]] = {}
        for s, r in self.edges:
            out_edges.setdefault(s, []).append(r)
        alive: set[Head] = set()
        for layer in reversed(range(n_layers)):
            for h in range(n_heads):
                for r in out_edges.get((layer, h), []):
                    if r == LOGITS or (r.point == "q" and (r.layer, r.head) in alive):
                        alive.add((layer, h))
                    elif r.point != "q" and any((r.layer, q) in alive for q in range(r.head * group, (r.head + 1) * group)):
                        alive.add((layer, h))
        return sorted(alive)

    def check(self, n_layers: int, n_heads: int, n_kv_heads: int) -> None:
        for (layer, head), r in self.edges:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise CircuitError(
                    f"edge from head {(layer, head)}: no such head (layers 0..{n_layers - 1}, heads 0..{n_heads - 1})"
                )
            if r == LOGITS:
                continue
            n = n_heads if r.point == "q" else n_kv_heads
            if (
                not isinstance(r, Receiver)
                or r.point not in RECEIVER_POINTS
                or not (layer < r.layer < n_layers and 0 <= r.head < n)
            ):
                raise CircuitError(f"edge {layer}.{head} → {r}: a receiver is a q, k or v head of a later layer, or 'logits'")


class _Plan:
    """Which senders each receiver of each layer sees mean-ablated, as 0/1 matrices."""

    def __init__(self, circuit: EdgeCircuit, n_layers: int, n_heads: int, n_kv_heads: int) -> None:
        self.alive = set(circuit.heads(n_layers, n_heads, n_kv_heads))
        group = n_heads // n_kv_heads
        kept = circuit.edges
        self.senders = sorted(self.alive)  # a head outside the circuit outputs its mean: it writes nothing to ablate
        self.receivers: dict[int, list[Receiver]] = {}
        self.ablated: dict[int, torch.Tensor] = {}  # layer → [sender before the layer, receiver]
        for layer in range(n_layers):
            before = [s for s in self.senders if s[0] < layer]
            receivers = [Receiver("q", layer, h) for h in range(n_heads) if (layer, h) in self.alive]
            for p in ("k", "v"):
                receivers += [
                    Receiver(p, layer, kv)
                    for kv in range(n_kv_heads)
                    if any((layer, q) in self.alive for q in range(kv * group, (kv + 1) * group))
                ]
            cut = torch.tensor([[(s, r) not in kept for r in receivers] for s in before], dtype=torch.bool).reshape(
                len(before), len(receivers)
            )
            keep_cols = cut.any(0)  # receivers that see some sender ablated; the others read the stream as it is
            self.receivers[layer] = [r for r, c in zip(receivers, keep_cols.tolist(), strict=True) if c]
            self.ablated[layer] = cut[:, keep_cols]
        self.logits_cut = torch.tensor([(s, LOGITS) not in kept for s in self.senders], dtype=torch.bool)


def _check_means(means: Mapping[int, torch.Tensor], attention_mask: torch.Tensor, n_layers: int) -> int:
    if sorted(means) != list(range(n_layers)):
        raise CircuitError(f"means for layers {sorted(means)}; the model has layers 0..{n_layers - 1}")
    lengths = attention_mask.sum(-1).tolist()
    n = next(iter(means.values())).shape[0]
    if len(set(lengths)) != 1 or int(lengths[0]) != n:
        raise CircuitError(f"the mean activations are of {n}-token prompts; these prompts have {sorted(set(lengths))} tokens")
    return n


@checked
def edge_ablated_logits(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    circuit: EdgeCircuit,
    means: Mapping[int, torch.Tensor],
) -> torch.Tensor:
    """Last-position logits ``[batch, vocab]`` of the circuit run: ``circuit``'s edges kept,
    every other edge mean-ablated (see the module docstring).

    Args:
        model: the model whose edges are ablated.
        input_ids: ``LongTensor[batch, pos]``, prompts of the length ``means`` were taken at.
        attention_mask: ``LongTensor[batch, pos]`` or None (no padding).
        circuit: the edges kept.
        means: every head's mean output per position (`head_means`).

    Examples:
        Keeping every edge is the model:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        >>> means = graftlens.head_means(m, [(ids, None)])
        >>> heads = [(layer, h) for layer in range(4) for h in range(4)]
        >>> every = graftlens.EdgeCircuit.complete(heads, 4, 2)
        >>> kept = graftlens.edge_ablated_logits(m, ids, None, every, means)
        >>> torch.allclose(kept, graftlens.run_logits(m, ids)[:, -1], atol=1e-5)
        True
    """
    loaded = as_loaded(model)
    a = loaded.adapter
    circuit.check(a.n_layers, a.n_heads, a.n_kv_heads)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    _check_means(means, mask, a.n_layers)
    plan = _Plan(circuit, a.n_layers, a.n_heads, a.n_kv_heads)
    batch, width = input_ids.shape
    per_row = max(1, len(plan.senders)) * width * a.d_model * 4  # bytes of one prompt's sender writes
    chunk = max(1, WRITES_BUDGET // per_row)
    parts = []
    for start in range(0, batch, chunk):
        rows = slice(start, min(batch, start + chunk))
        run = EdgeCircuitRun(loaded, plan, means, mask[rows])
        with torch.no_grad(), edit(loaded, run.edits()):
            parts.append(
                run_logits(loaded, input_ids[rows], mask[rows] if attention_mask is not None else None, last_only=True)[:, -1]
            )
    return torch.cat(parts)


class EdgeCircuitRun:
    """One circuit run over a batch: the hook functions of `edge_ablated_logits` and the state
    they share as the run goes, layer by layer.

    ``writes`` ``[sender, batch, pos, d_model]``: each circuit head's write when it alone is set
    to its mean, filled as each layer's ``z`` passes; ``streams[layer]``: the residual stream
    entering a layer with receivers; ``inputs[layer]``: each receiver's own q/k/v there. While
    the run computes heads' writes or receivers' inputs itself (through the model's own
    modules), ``own_calls`` is set and its hooks let those calls through unedited."""

    def __init__(self, loaded: LoadedModel, plan: _Plan, means: Mapping[int, torch.Tensor], mask: torch.Tensor) -> None:
        self.loaded = loaded
        self.plan = plan
        self.means = means
        self.n_positions = next(iter(means.values())).shape[0]
        self.real = mask.bool()[:, :, None]  # [batch, pos, 1]: padding writes nothing
        self.sender_index = {s: i for i, s in enumerate(plan.senders)}
        self.writes: torch.Tensor | None = None
        self.streams: dict[int, torch.Tensor] = {}
        self.inputs: dict[int, dict[Receiver, torch.Tensor]] = {}
        self.own_calls = False

    @contextmanager
    def _calling_the_model(self) -> Iterator[None]:
        """The hooks below stand aside while the run calls the model's modules itself."""
        self.own_calls = True
        try:
            yield
        finally:
            self.own_calls = False

    def edits(self) -> dict[Point, Callable]:
        """The run's edits: every layer's ``z`` ablated, receivers' inputs swapped, logits read."""
        n_layers = self.loaded.adapter.n_layers
        edits: dict[Point, Callable] = {Point("z", layer): self._ablate(layer) for layer in range(n_layers)}
        for layer in range(n_layers):
            receivers = self.plan.receivers[layer]
            if receivers:
                edits[Point("resid_pre", layer)] = self._record_stream(layer)
                for point in [p for p in RECEIVER_POINTS if any(r.point == p for r in receivers)]:
                    edits[Point(point, layer)] = self._swap(point, layer)
        edits[Point("resid_post", n_layers - 1)] = self._logits_read
        return edits

    def _record_stream(self, layer: int) -> Callable:
        def record(x: torch.Tensor) -> None:  # [batch, pos, d_model]
            self.streams[layer] = x

        return record

    def _receiver_values(self, layer: int) -> dict[Receiver, torch.Tensor]:
        """Each receiver's own q/k/v row block ``[batch, pos, d_head]``, from its own stream."""
        if layer not in self.inputs:
            receivers, cut = self.plan.receivers[layer], self.plan.ablated[layer]  # cut: [sender before the layer, receiver]
            stream = self.streams[layer]
            sent = self.writes[: cut.shape[0]].flatten(1)  # [sender, batch·pos·d_model]: senders are in layer order
            seen = (cut.T.to(sent.dtype) @ sent).view(len(receivers), *stream.shape)  # [receiver, batch, pos, d_model]
            with self._calling_the_model():
                self.inputs[layer] = {
                    r: receiver_input(self.loaded, layer, stream + seen[j].to(stream.dtype))[r.point][:, :, r.head]
                    for j, r in enumerate(receivers)
                }
        return self.inputs[layer]

    def _swap(self, point: str, layer: int) -> Callable:
        def swap(x: torch.Tensor) -> torch.Tensor | None:  # [batch, pos, head, d_head]
            if self.own_calls:
                return None
            out = x.clone()
            for r, value in self._receiver_values(layer).items():
                if r.point == point:
                    out[:, :, r.head] = value.to(x.dtype)
            return out

        return swap

    def _ablate(self, layer: int) -> Callable:
        n_heads = self.loaded.adapter.n_heads
        mine = [h for h in range(n_heads) if (layer, h) in self.plan.alive]
        dead = torch.tensor([h not in mine for h in range(n_heads)])

        def ablate(z: torch.Tensor) -> torch.Tensor | None:  # [batch, pos, head, d_head]
            if self.own_calls:
                return None
            at_mean = z.clone()
            at_mean[:, -self.n_positions :] = self.means[layer].to(z.device, z.dtype)
            z = torch.where(dead.to(z.device)[:, None], at_mean, z)
            if mine:
                self._hold_writes(layer, mine, z, at_mean)
            return z

        return ablate

    def _hold_writes(self, layer: int, heads: list[int], z: torch.Tensor, at_mean: torch.Tensor) -> None:
        """Each circuit head's write when it alone is set to its mean."""
        with self._calling_the_model():
            moved = head_writes(self.loaded, layer, z, at_mean)  # [head, batch, pos, d_model]
        if self.writes is None:
            self.writes = moved.new_zeros(len(self.plan.senders), *moved.shape[1:])
        for h in heads:
            self.writes[self.sender_index[(layer, h)]] = torch.where(self.real, moved[h], 0.0)

    def _logits_read(self, x: torch.Tensor) -> torch.Tensor:
        cut = [i for i, c in enumerate(self.plan.logits_cut.tolist()) if c]
        if not cut:
            return x
        return x + self.writes[cut].sum(0).to(x.dtype)


def edges_for_heads(scores: EdgeScores, n_heads_wanted: int, by: str = "abs") -> EdgeCircuit:
    """The first ``N`` edges of ``scores``' ranking (`EdgeScores.top_edges`), ``N`` the
    fewest whose circuit holds at least ``n_heads_wanted`` heads (heads with a path of kept edges
    to the logits; one edge may bring several): an edge circuit as large, in heads, as a node
    circuit of that many heads. ``N`` is found by bisection (the heads only grow with ``N``)."""
    n_layers, n_heads = scores.node_scores.shape
    n_kv = n_heads // scores.n_kv_groups
    if not 0 < n_heads_wanted <= n_layers * n_heads:
        raise CircuitError(f"an edge circuit of {n_heads_wanted} heads; the model has {n_layers * n_heads}")
    ranked = [(s, r) for s, r, _ in scores.top_edges(int(scores.valid.sum()), by)]  # type: ignore[arg-type]

    def heads_of(n: int) -> int:
        return len(EdgeCircuit(ranked[:n]).heads(n_layers, n_heads, n_kv))

    low, high = 0, len(ranked)  # heads_of(high) is every head: each has its edge to the logits
    while low < high:
        mid = (low + high) // 2
        if heads_of(mid) >= n_heads_wanted:
            high = mid
        else:
            low = mid + 1
    return EdgeCircuit(ranked[:low])


def edge_circuit_sizes(circuit: EdgeCircuit, n_layers: int, n_heads: int, n_kv_heads: int) -> tuple[int, int]:
    """``(edges, heads in the circuit)``: its size both ways."""
    return len(circuit.edges), len(circuit.heads(n_layers, n_heads, n_kv_heads))
