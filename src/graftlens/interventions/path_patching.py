"""Path patching (Wang et al. 2023; Goldowsky-Dill et al. 2023), as Prakash et al. use it to find
the entity-tracking circuit: the effect of one *sender* head's output, passed only through chosen
*receivers*, from a *source* run into a *base* run.

One path-patched forward is two runs of the model on the base input:

1. **Sender run.** Every head's output (``z``) at every layer is frozen to its value in the base
   run, except the sender's, which takes its value in the source run at the sender positions.
   The change can then reach later layers only through the residual stream and the MLPs.
2. **Receiver run** (when receivers are heads). The base run again, with only the receivers'
   queries, keys or values, at the receiver positions, replaced by their values in the sender run.

With ``receivers="logits"`` the sender run's logits are the result (the sender's effect on the
output through no other head); with ``receivers="everything"`` nothing is frozen and the result is
ordinary activation patching of the sender head. Prakash et al. patch the *corrupted* sender into
the *clean* run and rank heads by the relative drop of the correct answer's probability,
``(p_patched - p_clean) / p_clean``; :func:`path_patching` computes that score per head.

Receivers of ``k``/``v`` under grouped-query attention are key/value heads: patching one changes
every query head of its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from graftlens.errors import GraftlensError
from graftlens.interventions.hooks import ActivationCache, capture, edit
from graftlens.interventions.points import Point
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.run import position_ids_for, run_logits
from graftlens.positions import PositionsLike, Spans, resolve_positions

Head = tuple[int, int]  # (layer, head)


class PathPatchingError(GraftlensError):
    """A sender, receiver or position set does not fit the model or the inputs."""


@dataclass(frozen=True)
class Receiver:
    """The input ``point`` (``"q"``, ``"k"`` or ``"v"``) of head ``head`` at layer ``layer``."""

    point: Literal["q", "k", "v"]
    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.point}.{self.layer}.{self.head}"


Receivers = Literal["logits", "everything"] | Sequence[Receiver]


@dataclass(frozen=True)
class PathInputs:
    """A base and a source input of equal batch size, with their masks and span annotations.

    The two may differ in length: positions are selectors resolved on each input separately."""

    base_ids: torch.Tensor  # LongTensor[batch, pos]
    source_ids: torch.Tensor  # LongTensor[batch, pos']
    base_mask: torch.Tensor | None = None  # LongTensor[batch, pos]
    source_mask: torch.Tensor | None = None  # LongTensor[batch, pos']
    base_spans: Sequence[Spans] | None = None
    source_spans: Sequence[Spans] | None = None

    def __post_init__(self) -> None:
        if self.base_ids.shape[0] != self.source_ids.shape[0]:
            raise PathPatchingError(
                "base and source inputs need one row each per example: "
                f"{self.base_ids.shape[0]} and {self.source_ids.shape[0]} rows"
            )

    @property
    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base_mask if self.base_mask is not None else torch.ones_like(self.base_ids)
        source = self.source_mask if self.source_mask is not None else torch.ones_like(self.source_ids)
        return base, source


def paired_positions(base_where: torch.Tensor, source_where: torch.Tensor, what: str) -> tuple[torch.Tensor, ...]:
    """``(rows, base positions, source positions)``: the i-th claimed position of each base row
    paired with the i-th claimed position of the same source row (equal counts required)."""
    rows, base_pos, source_pos = [], [], []
    for b in range(base_where.shape[0]):
        bp = base_where[b].nonzero().flatten()
        sp = source_where[b].nonzero().flatten()
        if len(bp) != len(sp) or len(bp) == 0:
            raise PathPatchingError(
                f"{what} positions: example {b} has {len(bp)} in the base input and {len(sp)} in the source input; "
                "they must claim the same number (at least one) in each"
            )
        rows += [b] * len(bp)
        base_pos.append(bp)
        source_pos.append(sp)
    return torch.tensor(rows, dtype=torch.long), torch.cat(base_pos), torch.cat(source_pos)


def _check_head(adapter, layer: int, head: int, n_heads: int, what: str) -> None:
    if not 0 <= layer < adapter.n_layers:
        raise PathPatchingError(f"{what}: layer {layer} out of range (the model has layers 0..{adapter.n_layers - 1})")
    if not 0 <= head < n_heads:
        raise PathPatchingError(f"{what}: head {head} out of range (layer {layer} has heads 0..{n_heads - 1})")


def head_outputs(
    model: LoadedModel | nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, points: Sequence[Point] = ()
) -> tuple[torch.Tensor, ActivationCache]:
    """Last-position logits and every layer's per-head outputs ``z`` (and ``points``) of one run."""
    loaded = as_loaded(model)
    points = [Point("z", layer) for layer in range(loaded.adapter.n_layers)] + list(points)
    with capture(loaded, points) as cache:
        logits = run_logits(loaded, ids, mask, last_only=True)[:, -1]
    return logits, cache


def path_patched_logits(
    model: LoadedModel | nn.Module,
    inputs: PathInputs,
    sender: Head | None,
    *,
    sender_positions: PositionsLike = "LT",
    source_positions: PositionsLike | None = None,
    receivers: Receivers = "logits",
    receiver_positions: PositionsLike = "LT",
    base_cache: ActivationCache | None = None,
    source_cache: ActivationCache | None = None,
    prefix=None,
    one_column: bool = True,
    base_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last-position logits ``[batch, vocab]`` of the base run with the sender's source output
    passed only through ``receivers`` (see the module docstring).

    ``sender=None`` patches nothing: the result is the base run. ``source_positions`` (default:
    ``sender_positions``) are where the sender's value is read in the source run. ``base_cache``
    and ``source_cache`` (from :func:`head_outputs`) save a run each when many senders share inputs.
    ``prefix``: the base run's KV cache of its first columns (:func:`graftlens.models.prefix.run_prefix`),
    none of which the sender or the receivers may touch (see :func:`first_touched_column`); both
    runs then compute only the columns after it. With ``one_column`` (when heads are frozen and
    the sender and its receivers share one column per row) the sender run computes that column alone;
    ``base_logits`` (the base run's last-position logits) then saves a run when the receivers are the logits."""
    loaded = as_loaded(model)
    adapter = loaded.adapter
    base_mask, source_mask = inputs.masks
    if base_cache is None:
        _, base_cache = head_outputs(loaded, inputs.base_ids, inputs.base_mask)
    layers = range(adapter.n_layers)
    edits = {}
    if receivers != "everything":
        for layer in layers:  # every head frozen to the base run ...
            edits[Point("z", layer)] = _replace_with(base_cache[Point("z", layer)])
    if sender is not None:  # ... but the sender
        layer, head = sender
        _check_head(adapter, layer, head, adapter.n_heads, "sender")
        if source_cache is None or Point("z", layer) not in source_cache:
            _, source_cache = head_outputs(loaded, inputs.source_ids, inputs.source_mask)
        where_base = resolve_positions(sender_positions, base_mask, inputs.base_spans)
        where_source = resolve_positions(
            sender_positions if source_positions is None else source_positions, source_mask, inputs.source_spans
        )
        rows, bpos, spos = paired_positions(where_base, where_source, "sender")
        value = source_cache[Point("z", layer)][rows, spos, head]  # [n, d_head]
        frozen = edits.get(Point("z", layer))
        edits[Point("z", layer)] = _sender_edit(frozen, rows, bpos, head, value, inputs.base_ids.shape[1])

    receiver_points: dict[Point, list[int]] = {}
    if not isinstance(receivers, str):
        for r in receivers:
            if r.point not in ("q", "k", "v"):
                raise PathPatchingError(f"receiver {r}: a receiver reads a head's q, k or v, not {r.point!r}")
            _check_head(adapter, r.layer, r.head, adapter.n_heads if r.point == "q" else adapter.n_kv_heads, f"receiver {r}")
            receiver_points.setdefault(Point(r.point, r.layer), []).append(r.head)

    def forward() -> torch.Tensor:
        if prefix is not None:
            from graftlens.models.prefix import continue_prefix

            return continue_prefix(loaded, prefix, inputs.base_ids, base_mask)
        return run_logits(loaded, inputs.base_ids, inputs.base_mask, last_only=True)[:, -1]

    columns = _sender_columns(inputs, sender, sender_positions, receivers, receiver_positions) if one_column else None
    if columns is not None:
        # Every head frozen: each column's residual stream depends on that column alone, so the
        # sender run computes just the one column a row needs (the sender's, where its receivers
        # are), with and without the sender; what the sender changes is added to the base run's
        # values (a sender that changes nothing leaves them exactly as they are). ``base_cache``
        # may hold the receivers' base inputs too (:func:`head_outputs` with ``points``).
        frozen_only = {Point("z", layer): _replace_with(base_cache[Point("z", layer)]) for layer in layers}
        logits, sent = _one_column_run(loaded, inputs, columns, base_cache, edits, receiver_points)
        logits_0, sent_0 = _one_column_run(loaded, inputs, columns, base_cache, frozen_only, receiver_points)
        if not receiver_points:
            if base_logits is None:
                base_logits = forward()
            return base_logits + (logits - logits_0).to(base_logits.dtype)
        missing = [p for p in receiver_points if p not in base_cache]
        if missing:
            with capture(loaded, missing) as more, torch.no_grad():
                run_logits(loaded, inputs.base_ids, inputs.base_mask, last_only=True)
            base_cache = ActivationCache({**base_cache, **more})
        # Each receiver's input in the sender run: its base value plus what the sender changed.
        moved = {point: base_cache[point] + (sent[point] - sent_0[point]) for point in receiver_points}
        where = resolve_positions(receiver_positions, base_mask, inputs.base_spans)  # [batch, pos]
        receiver_edits = {point: _receiver_edit(moved[point], where, heads) for point, heads in receiver_points.items()}
        with edit(loaded, receiver_edits):
            return forward()
    with edit(loaded, edits), capture(loaded, receiver_points) as sent:
        logits = forward()
    if not receiver_points:
        return logits
    where = resolve_positions(receiver_positions, base_mask, inputs.base_spans)  # [batch, pos]
    receiver_edits = {point: _receiver_edit(sent[point], where, heads) for point, heads in receiver_points.items()}
    with edit(loaded, receiver_edits):
        return forward()


def _sender_columns(inputs: PathInputs, sender: Head | None, sender_positions: PositionsLike, receivers: Receivers,
                    receiver_positions: PositionsLike) -> torch.Tensor | None:  # fmt: skip
    """``LongTensor[batch]``: the one column each base row's sender run must compute (the sender's
    column, where the receivers are too; the last one for the logits), or None when heads are not
    frozen, nothing is sent, or a row needs more than one column."""
    if receivers == "everything" or sender is None:
        return None
    base_mask, _ = inputs.masks
    where = resolve_positions(sender_positions, base_mask, inputs.base_spans)
    if receivers == "logits":
        where = where.clone()
        where[:, -1] = True  # left-padded or not, the logits are read at the last column
    else:
        where = where | resolve_positions(receiver_positions, base_mask, inputs.base_spans)
    if not bool((where.sum(1) == 1).all()) or not bool(base_mask.gather(1, where.float().argmax(1, keepdim=True)).all()):
        return None
    return where.float().argmax(1)


def _one_column_run(loaded, inputs: PathInputs, columns: torch.Tensor, base_cache: ActivationCache, edits, receiver_points):
    """The sender run on one column per row (``[batch, 1]`` forward, the column's position id):
    its logits and the receivers' inputs there, scattered back to full width."""
    base_mask, _ = inputs.masks
    rows = torch.arange(inputs.base_ids.shape[0], device=inputs.base_ids.device)
    cols = columns.to(inputs.base_ids.device)
    ids = inputs.base_ids[rows, cols][:, None]  # [batch, 1]
    positions = position_ids_for(base_mask)[rows, cols][:, None]
    one = {}
    for point, fn in edits.items():
        full = base_cache[point]  # [batch, pos, head, d_head]

        def column_edit(x: torch.Tensor, fn=fn, full=full) -> torch.Tensor:
            # Apply the full-width edit to the base values, then keep each row's column.
            return fn(full.to(x.device, x.dtype))[rows.to(x.device), cols.to(x.device)][:, None]

        one[point] = column_edit
    with edit(loaded, one), capture(loaded, receiver_points) as sent_one, torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, logits_to_keep=1).logits
    sent = ActivationCache()
    for point in receiver_points:
        value = sent_one[point]  # [batch, 1, head, d_head]
        full = value.new_zeros((value.shape[0], inputs.base_ids.shape[1], *value.shape[2:]))
        full[rows.to(value.device), cols.to(value.device)] = value[:, 0]
        sent[point] = full
    return logits[:, -1], sent


# The edits below take the columns a forward call computes: all of them, or, continuing a cached
# prefix, only the last ``x.shape[1]``; what they write is aligned on the right.


def _replace_with(value: torch.Tensor):
    def fn(x: torch.Tensor) -> torch.Tensor:
        return value[:, value.shape[1] - x.shape[1] :].to(x.device, x.dtype)

    return fn


def _sender_edit(frozen, rows: torch.Tensor, positions: torch.Tensor, head: int, value: torch.Tensor, width: int):
    def fn(x: torch.Tensor) -> torch.Tensor:
        out = (frozen(x) if frozen is not None else x).clone()  # [batch, pos, head, d_head]
        shifted = positions.to(x.device) - (width - x.shape[1])
        out[rows.to(x.device), shifted, head] = value.to(x.device, x.dtype)
        return out

    return fn


def _receiver_edit(sent: torch.Tensor, where: torch.Tensor, heads: list[int]):
    def fn(x: torch.Tensor) -> torch.Tensor:  # [batch, pos, head, d_head]
        chosen = torch.zeros(x.shape[2], dtype=torch.bool, device=x.device)
        chosen[heads] = True
        mask = where[:, where.shape[1] - x.shape[1] :].to(x.device)[:, :, None, None] & chosen[None, None, :, None]
        return torch.where(mask, sent[:, sent.shape[1] - x.shape[1] :].to(x.device, x.dtype), x)

    return fn


def first_touched_column(inputs: PathInputs, sender_positions: PositionsLike, receivers: Receivers,
                         receiver_positions: PositionsLike) -> int:  # fmt: skip
    """The first column of the (left-padded) base batch that a path-patched run changes: every
    column before it is the base run's own, so a KV cache of them can be shared (0: none)."""
    base_mask, _ = inputs.masks
    if not bool(base_mask[:, -1].all()):
        return 0  # not left-padded
    where = resolve_positions(sender_positions, base_mask, inputs.base_spans)
    if not isinstance(receivers, str):
        where = where | resolve_positions(receiver_positions, base_mask, inputs.base_spans)
    columns = where.any(0).nonzero().flatten()
    return int(columns[0]) if len(columns) else 0


@dataclass(frozen=True)
class PathPatchingScores:
    """Per sender head: the mean relative change of the target's probability,
    ``(p_patched - p_base) / p_base`` (``scores[layer, head]``), and the base probability."""

    scores: torch.Tensor  # [layer, head]
    base_prob: torch.Tensor  # [batch]

    def top(self, k: int, largest: bool = False) -> list[Head]:
        """The ``k`` heads with the most negative scores (or the largest with ``largest``)."""
        return top_heads(self.scores, k, largest)


def top_heads(scores: torch.Tensor, k: int, largest: bool = False) -> list[Head]:
    """The ``k`` heads of ``scores[layer, head]`` ranked first (most negative unless ``largest``),
    ties broken by (layer, head) order."""
    n_heads = scores.shape[1]
    flat = scores.flatten()
    if not 0 <= k <= flat.numel():
        raise PathPatchingError(f"cannot pick {k} heads among {flat.numel()}")
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]) if largest else float(flat[i]), i))
    return [(i // n_heads, i % n_heads) for i in order[:k]]


def target_probs(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """``softmax(logits)[b, target_ids[b]]`` for last-position logits ``[batch, vocab]``."""
    return logits.float().softmax(-1).gather(1, target_ids[:, None].to(logits.device))[:, 0]


def path_patching(
    model: LoadedModel | nn.Module,
    inputs: PathInputs,
    target_ids: torch.Tensor,
    *,
    senders: Sequence[Head] | None = None,
    sender_positions: PositionsLike = "LT",
    source_positions: PositionsLike | None = None,
    receivers: Receivers = "logits",
    receiver_positions: PositionsLike = "LT",
    share_prefix: bool = True,
) -> PathPatchingScores:
    """Path-patch every sender (default: every head) and score it as Prakash et al. do; unscored
    heads are 0. ``target_ids``: ``LongTensor[batch]``, the answer whose probability is tracked.

    With ``share_prefix`` the columns before the first one any sender or receiver touches are run
    once, with a KV cache, and every sender continues from there (the same result, computed on
    fewer columns)."""
    loaded = as_loaded(model)
    adapter = loaded.adapter
    points = sorted({Point(r.point, r.layer) for r in receivers}) if not isinstance(receivers, str) else []
    with torch.no_grad():
        base_logits, base_cache = head_outputs(loaded, inputs.base_ids, inputs.base_mask, points)
        _, source_cache = head_outputs(loaded, inputs.source_ids, inputs.source_mask)
        base_prob = target_probs(base_logits, target_ids)
        scores = torch.zeros(adapter.n_layers, adapter.n_heads)
        if senders is None:
            senders = [(layer, head) for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]
        prefix = None
        cut = first_touched_column(inputs, sender_positions, receivers, receiver_positions) if share_prefix else 0
        if cut > 0:
            from graftlens.models.prefix import run_prefix

            prefix = run_prefix(loaded, inputs.base_ids, inputs.masks[0], cut)
        for layer, head in senders:
            logits = path_patched_logits(
                loaded, inputs, (layer, head), sender_positions=sender_positions, source_positions=source_positions,
                receivers=receivers, receiver_positions=receiver_positions, base_cache=base_cache, source_cache=source_cache,
                prefix=prefix, base_logits=base_logits,
            )  # fmt: skip
            scores[layer, head] = ((target_probs(logits, target_ids) - base_prob) / base_prob).mean()
    return PathPatchingScores(scores, base_prob)
