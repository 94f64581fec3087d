"""Circuits of attention heads, and how faithful they are (Prakash et al., after Wang et al.).

A `Circuit` names groups of heads and the positions where each group works (value
fetchers at the last token, position detectors at the query box label, ...). Evaluating a
circuit *mean-ablates* every head outside it: at a position where some group works, the heads
not in that group output their mean over reference prompts; at every other position, all heads
do. Faithfulness is the circuit's accuracy over the full model's.

Means are taken per position in prompt coordinates, so reference prompts and evaluated prompts
must have the same length (entity-tracking prompts of one box count do).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.interventions.hooks import capture, edit
from graftlens.interventions.points import Point
from graftlens.models.arguments import check_finite, checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.names import Head
from graftlens.models.run import run_logits
from graftlens.positions import Spans, resolve_positions


class CircuitError(InterventionError):
    """A circuit names an unknown group, a head out of range, or does not fit the prompts."""


@dataclass(frozen=True)
class HeadGroup:
    """Heads that work at ``positions`` (a selector in prompt coordinates, such as ``"LT"``).

    ``heads`` are ``(layer, head)`` pairs, each named once.

    Args:
        heads: ``(layer, head)`` pairs, each named once.
        positions: where the heads work, a selector in prompt coordinates (``"FE"``, ``"LT"``,
            ``"(FE+LT)^C"``, index lists).

    Examples:
        >>> from graftlens import HeadGroup
        >>> HeadGroup(((22, 4), (23, 1)), "LT").heads
        ((22, 4), (23, 1))
    """

    heads: tuple[Head, ...]
    positions: str

    def __post_init__(self) -> None:
        if len(set(self.heads)) != len(self.heads):
            raise CircuitError(f"a head group names a head twice: {sorted(self.heads)}")


@dataclass(frozen=True)
class Circuit:
    """Named groups of heads (``{"value_fetchers": HeadGroup(...), ...}``), in order.

    Args:
        groups: group name → `HeadGroup`, in order.

    Examples:
        >>> from graftlens import Circuit, HeadGroup
        >>> fetchers, movers = HeadGroup(((3, 0), (3, 2)), "LT"), HeadGroup(((1, 1),), "0")
        >>> circuit = Circuit({"fetchers": fetchers, "movers": movers})
        >>> circuit.size, circuit.group("movers").positions
        (3, '0')
        >>> Circuit.from_json(circuit.to_json()) == circuit
        True
    """

    groups: Mapping[str, HeadGroup]

    def group(self, name: str) -> HeadGroup:
        try:
            return self.groups[name]
        except KeyError:
            raise CircuitError(f"the circuit has no group {name!r}; its groups: {', '.join(self.groups) or 'none'}") from None

    def check(self, n_layers: int, n_heads: int) -> None:
        for name, g in self.groups.items():
            bad = [h for h in g.heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
            if bad:
                raise CircuitError(
                    f"group {name!r}: heads {bad} out of range (the model has layers 0..{n_layers - 1}, heads 0..{n_heads - 1})"
                )

    @property
    def size(self) -> int:
        return sum(len(g.heads) for g in self.groups.values())

    def to_json(self) -> dict:
        return {name: {"positions": g.positions, "heads": [list(h) for h in g.heads]} for name, g in self.groups.items()}

    @classmethod
    def from_json(cls, data: Mapping) -> Circuit:
        try:
            return cls(
                {
                    name: HeadGroup(tuple((int(h[0]), int(h[1])) for h in g["heads"]), str(g["positions"]))
                    for name, g in data.items()
                }
            )
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            raise CircuitError(
                f"not a circuit: each group needs 'positions' and 'heads' as [layer, head] pairs ({exc!r})"
            ) from None


def random_circuit(circuit: Circuit, n_layers: int, n_heads: int, seed: int) -> Circuit:
    """A circuit with the same groups, positions and sizes, each group's heads drawn uniformly
    *without replacement* from all ``n_layers × n_heads`` heads (independently per group).

    (Prakash et al.'s released code drew with replacement and decoded ``index // n_layers``,
    which is right only when the model has as many layers as heads.)

    Args:
        circuit: the circuit whose groups, positions and sizes are kept.
        n_layers: the model's number of layers.
        n_heads: the model's number of query heads per layer.
        seed: the random seed (the same seed draws the same circuit).

    Examples:
        >>> from graftlens import Circuit, HeadGroup
        >>> fetchers, movers = HeadGroup(((3, 0), (3, 2)), "LT"), HeadGroup(((1, 1),), "0")
        >>> circuit = Circuit({"fetchers": fetchers, "movers": movers})
        >>> import graftlens
        >>> other = graftlens.random_circuit(circuit, n_layers=4, n_heads=4, seed=1)
        >>> [len(g.heads) for g in other.groups.values()], other.group("fetchers").positions
        ([2, 1], 'LT')
    """
    rng = random.Random(seed)
    everything = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    groups = {}
    for name, g in circuit.groups.items():
        if len(g.heads) > len(everything):
            raise CircuitError(f"group {name!r} has {len(g.heads)} heads; the model has only {len(everything)}")
        groups[name] = HeadGroup(tuple(sorted(rng.sample(everything, len(g.heads)))), g.positions)
    return Circuit(groups)


@checked
def head_means(
    model: LoadedModel | nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]
) -> dict[int, torch.Tensor]:
    """Per layer, every head's mean output ``z`` per position over the prompts of ``batches``
    (``(input_ids, attention_mask)`` pairs, all prompts of one length): ``{layer: [pos, head, d_head]}``.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        batches: ``(input_ids, attention_mask)`` pairs, all prompts of one length.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        >>> means = graftlens.head_means(m, [(ids, None)])
        >>> sorted(means), means[0].shape
        ([0, 1, 2, 3], torch.Size([4, 4, 8]))
    """
    loaded = as_loaded(model)
    points = [Point("z", layer) for layer in range(loaded.adapter.n_layers)]
    sums: dict[int, torch.Tensor] = {}
    count, length = 0, None
    for ids, mask in batches:
        lengths = (mask.sum(-1) if mask is not None else torch.full((ids.shape[0],), ids.shape[1])).tolist()
        if len(set(lengths)) != 1 or (length is not None and lengths[0] != length):
            raise CircuitError(
                f"mean activations need prompts of one length; got lengths {sorted(set(lengths) | {length} - {None})}"
            )
        length = int(lengths[0])
        with torch.no_grad(), capture(loaded, points) as cache:
            run_logits(loaded, ids, mask, last_only=True)
        for p in points:
            z = cache[p][:, -length:].float().sum(0)  # [pos, head, d_head] (left padding: real tokens last)
            sums[p.layer] = z if p.layer not in sums else sums[p.layer] + z
        count += ids.shape[0]
    if count == 0:
        raise CircuitError("mean activations need at least one prompt")
    return {layer: s / count for layer, s in sums.items()}


def check_means(who: str, means: object, n_layers: int, n_heads: int) -> None:
    """``means`` is what `head_means` gives: layer → ``[pos, head, d_head]``, for every layer,
    finite."""
    if not isinstance(means, Mapping) or not means:
        raise CircuitError(f"{who}: means must map every layer to its heads' means (graftlens.head_means), got {means!r}")
    missing = [layer for layer in range(n_layers) if layer not in means]
    if missing:
        raise CircuitError(f"{who}: means has no layer {missing[0]} (graftlens.head_means gives 0..{n_layers - 1})")
    for layer in range(n_layers):
        mean = means[layer]
        if not isinstance(mean, torch.Tensor) or mean.ndim != 3 or mean.shape[1] != n_heads:
            shape = list(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
            raise CircuitError(f"{who}: means[{layer}] must be [pos, head={n_heads}, d_head], got {shape}")
        check_finite(who, f"means[{layer}]", mean)


def mean_ablation_edits(
    n_layers: int,
    n_heads: int,
    circuit: Circuit | None,
    means: Mapping[int, torch.Tensor],
    attention_mask: torch.Tensor,
    spans: Sequence[Spans] | None = None,
) -> dict[Point, object]:
    """The ``z`` edits that keep ``circuit``'s heads (at their groups' positions) and give every
    other head at every position its mean. ``circuit=None`` keeps everything (no edit)."""
    if circuit is None:
        return {}
    circuit.check(n_layers, n_heads)
    batch, width = attention_mask.shape
    keep = torch.zeros(n_layers, batch, width, n_heads, dtype=torch.bool)
    for g in circuit.groups.values():
        where = resolve_positions(g.positions, attention_mask, spans).cpu()  # [batch, pos]
        for layer, head in g.heads:
            keep[layer, :, :, head] |= where
    lengths = attention_mask.sum(-1).tolist()
    if len(set(lengths)) != 1 or int(lengths[0]) != next(iter(means.values())).shape[0]:
        n = next(iter(means.values())).shape[0]
        raise CircuitError(f"the mean activations are of {n}-token prompts; these prompts have {sorted(set(lengths))} tokens")
    n = int(lengths[0])

    def fn_for(layer: int):
        mean = means[layer]  # [n, head, d_head]

        def fn(z: torch.Tensor) -> torch.Tensor:  # [batch, pos, head, d_head]
            full = z.clone()
            full[:, -n:] = mean.to(z.device, z.dtype)
            k = keep[layer].to(z.device)[..., None]
            return torch.where(k, z, full)

        return fn

    return {Point("z", layer): fn_for(layer) for layer in range(n_layers)}


@checked
def mean_ablated_logits(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    circuit: Circuit | None,
    means: Mapping[int, torch.Tensor],
    spans: Sequence[Spans] | None = None,
) -> torch.Tensor:
    """Last-position logits ``[batch, vocab]`` with every head outside ``circuit`` mean-ablated.

    Each circuit head keeps its own output at its group's positions; every other head output
    ``z`` (and circuit heads elsewhere) is replaced by its mean per position from ``means``
    (`head_means`). ``circuit=None`` ablates nothing (the plain run); ``Circuit({})``
    ablates every head. Faithfulness is the circuit's
    accuracy over the full model's.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        input_ids: ``LongTensor[batch, pos]``, left-padded; or a `Prompts` (its mask and spans
            fill the arguments left unset), or text.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding.
        circuit: the heads kept (None: ablate nothing; ``Circuit({})``: ablate every head).
        means: every head's mean output per position, layer → ``[pos, head, d_head]``
            (`head_means`).
        spans: per example, the named spans (``FE``, ``subject``, ...) the position selectors name.

    Examples:
        Keeping every head is the model:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> from graftlens import Circuit, HeadGroup
        >>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        >>> means = graftlens.head_means(m, [(ids, None)])
        >>> heads = tuple((layer, h) for layer in range(4) for h in range(4))
        >>> everything = Circuit({"all": HeadGroup(heads, "all")})
        >>> kept = graftlens.mean_ablated_logits(m, ids, None, everything, means)
        >>> torch.allclose(kept, graftlens.run_logits(m, ids)[:, -1], atol=1e-5)
        True
    """
    loaded = as_loaded(model)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    a = loaded.adapter
    check_means("mean_ablated_logits", means, a.n_layers, a.n_heads)
    with edit(loaded, mean_ablation_edits(a.n_layers, a.n_heads, circuit, means, mask, spans)):
        return run_logits(loaded, input_ids, attention_mask, last_only=True)[:, -1]


def accuracy(logits: torch.Tensor, target_ids: torch.Tensor) -> float:
    """Share of rows whose top token is the target."""
    return float((logits.argmax(-1) == target_ids.to(logits.device)).float().mean())
