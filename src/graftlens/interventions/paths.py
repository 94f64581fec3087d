"""Path patching (Wang et al. 2023; Goldowsky-Dill et al. 2023), as Prakash et al. use it to find
the entity-tracking circuit: the effect of one *sender* head's output, passed only through chosen
*receivers*, from a *corrupted* run into a *clean* run.

One path-patched forward is two runs of the model on the clean input:

1. **Sender run.** Every head's output (``z``) at every layer is frozen to its value in the clean
   run, except the sender's, which takes its value in the corrupted run at the sender positions.
   The change can then reach later layers only through the residual stream and the MLPs.
2. **Receiver run** (when receivers are heads). The clean run again, with only the receivers'
   queries, keys or values, at the receiver positions, replaced by their values in the sender run.

With ``receivers="logits"`` the sender run's logits are the result (the sender's effect on the
output through no other head); with ``receivers="everything"`` nothing is frozen and the result is
ordinary activation patching of the sender head. Prakash et al. patch the *corrupted* sender into
the *clean* run and rank heads by the relative drop of the correct answer's probability,
``(p_patched - p_clean) / p_clean``; `path_patching` computes that score per head.

Receivers of ``k``/``v`` under grouped-query attention are key/value heads: patching one changes
every query head of its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.interventions.hooks import ActivationCache, Edit, capture, edit
from graftlens.interventions.metrics import Metric, check_metric, per_prompt, prob
from graftlens.interventions.points import Point
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.names import Head
from graftlens.models.run import position_ids_for, run_logits
from graftlens.positions import PositionsLike, Spans, resolve_positions


class PathPatchingError(InterventionError):
    """A sender, receiver or position set does not fit the model or the inputs."""


@dataclass(frozen=True)
class Receiver:
    """The input ``point`` (``"q"``, ``"k"`` or ``"v"``) of head ``head`` at layer ``layer``.

    Args:
        point: ``"q"``, ``"k"`` or ``"v"``.
        layer: the receiving head's layer.
        head: the head (a key/value head for ``k``/``v`` under grouped-query attention).

    Examples:
        >>> from graftlens import Receiver
        >>> str(Receiver("q", 20, 3))
        'q.20.3'
    """

    point: Literal["q", "k", "v"]
    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.point}.{self.layer}.{self.head}"


Receivers = Literal["logits", "everything"] | Sequence[Receiver]


@dataclass(frozen=True)
class PathInputs:
    """A clean and a corrupted input of equal batch size, with their masks and span annotations.

    The two may differ in length: positions are selectors resolved on each input separately.

    Args:
        clean_ids: ``LongTensor[batch, pos]``, the clean prompts.
        corrupted_ids: ``LongTensor[batch, pos']``, the corrupted prompts (same batch size).
        clean_mask: the clean prompts' attention mask (None: no padding).
        corrupted_mask: the corrupted prompts' attention mask (None: no padding).
        clean_spans: per clean prompt, its named spans.
        corrupted_spans: per corrupted prompt, its named spans.

    Examples:
        >>> import torch
        >>> from graftlens import PathInputs
        >>> clean = torch.tensor([[5, 6, 7], [8, 9, 10]])
        >>> inputs = PathInputs(clean, torch.tensor([[5, 11, 12, 7], [8, 13, 14, 10]]))
        >>> inputs.masks[1].shape  # masks default to no padding
        torch.Size([2, 4])
    """

    clean_ids: torch.Tensor  # LongTensor[batch, pos]
    corrupted_ids: torch.Tensor  # LongTensor[batch, pos']
    clean_mask: torch.Tensor | None = None  # LongTensor[batch, pos]
    corrupted_mask: torch.Tensor | None = None  # LongTensor[batch, pos']
    clean_spans: Sequence[Spans] | None = None
    corrupted_spans: Sequence[Spans] | None = None

    def __post_init__(self) -> None:
        if self.clean_ids.shape[0] != self.corrupted_ids.shape[0]:
            raise PathPatchingError(
                "clean and corrupted inputs need one row each per example: "
                f"{self.clean_ids.shape[0]} and {self.corrupted_ids.shape[0]} rows"
            )

    @classmethod
    def of(cls, clean, corrupted) -> PathInputs:
        """The clean and corrupted `Prompts` (each with its ids, mask and spans)
        as one input.

        Examples:
            >>> import graftlens
            >>> from graftlens.models import tiny_model
            >>> m = tiny_model("llama")
            >>> clean = graftlens.prompts(m, ["[FE:Ann] stars in", "[FE:Bo] stars"])
            >>> corrupted = graftlens.prompts(m, ["[FE:Cy] stars in", "[FE:Di] stars"])
            >>> graftlens.PathInputs.of(clean, corrupted).clean_spans[0]["FE"]
            (0, 3)
        """
        return cls(
            clean.input_ids, corrupted.input_ids, clean.attention_mask, corrupted.attention_mask, clean.spans, corrupted.spans
        )

    def select(self, rows: torch.Tensor) -> PathInputs:
        """The inputs of the examples ``rows`` (``LongTensor[n]``), in that order."""

        def pick(t):
            return None if t is None else t[rows.to(t.device)]

        def spans(sp):
            return None if sp is None else [sp[int(i)] for i in rows]

        return PathInputs(
            pick(self.clean_ids),
            pick(self.corrupted_ids),
            pick(self.clean_mask),
            pick(self.corrupted_mask),
            spans(self.clean_spans),
            spans(self.corrupted_spans),
        )

    @property
    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        clean = self.clean_mask if self.clean_mask is not None else torch.ones_like(self.clean_ids)
        corrupted = self.corrupted_mask if self.corrupted_mask is not None else torch.ones_like(self.corrupted_ids)
        return clean, corrupted


def check_receivers(who: str, receivers: object) -> None:
    """``receivers`` is ``"logits"``, ``"everything"`` or a non-empty list of `Receiver`
    (any other string would silently mean another method)."""
    if isinstance(receivers, str):
        if receivers not in ("logits", "everything"):
            raise PathPatchingError(f'{who}: receivers must be "logits", "everything" or Receivers, not {receivers!r}')
        return
    if not isinstance(receivers, Sequence) or not receivers or not all(isinstance(r, Receiver) for r in receivers):
        raise PathPatchingError(f'{who}: receivers must be "logits", "everything" or a list of Receivers, got {receivers!r}')


def paired_positions(clean_where: torch.Tensor, corrupted_where: torch.Tensor, what: str) -> tuple[torch.Tensor, ...]:
    """``(rows, clean positions, corrupted positions)``: the i-th claimed position of each clean row
    paired with the i-th claimed position of the same corrupted row (equal counts required)."""
    rows, base_pos, source_pos = [], [], []
    for b in range(clean_where.shape[0]):
        bp = clean_where[b].nonzero().flatten()
        sp = corrupted_where[b].nonzero().flatten()
        if len(bp) != len(sp) or len(bp) == 0:
            raise PathPatchingError(
                f"{what} positions: example {b} has {len(bp)} in the clean input and {len(sp)} in the corrupted input; "
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


@checked
def path_patched_logits(
    model: LoadedModel | nn.Module,
    inputs: PathInputs,
    sender: Head | None,
    *,
    sender_positions: PositionsLike = "LT",
    corrupted_positions: PositionsLike | None = None,
    receivers: Receivers = "logits",
    receiver_positions: PositionsLike = "LT",
) -> torch.Tensor:
    """Last-position logits ``[batch, vocab]`` of the clean run with the sender's corrupted output
    passed only through ``receivers`` (see the module docstring).

    Args:
        model: the model path-patched.
        inputs: the clean and corrupted inputs, with their masks and spans (`PathInputs`), or a
            ``(clean, corrupted)`` pair of `Prompts`.
        sender: ``(layer, head)`` whose output is taken from the corrupted run; None patches nothing
            (the result is the clean run).
        sender_positions: where the sender's value is written in the clean run (a selector).
        corrupted_positions: where it is read in the corrupted run (default: ``sender_positions``).
        receivers: ``"logits"`` (the sender reaches the logits directly), ``"everything"``
            (activation patching of the head), or a list of `Receiver` heads' q, k or v.
        receiver_positions: where the receivers read the sender's effect.

    Many senders on the same inputs: `path_patching` scores them all and shares the runs.

    Examples:
        No sender is the clean run; ``receivers="everything"`` is activation patching of the head:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> from graftlens import PathInputs
        >>> inputs = PathInputs(torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 9, 7, 8]]))
        >>> none = graftlens.path_patched_logits(m, inputs, None)
        >>> torch.allclose(none, graftlens.run_logits(m, inputs.clean_ids)[:, -1], atol=1e-5)
        True
        >>> graftlens.path_patched_logits(m, inputs, (1, 2), receivers="everything").shape
        torch.Size([1, 96])
    """
    check_receivers("path_patched_logits", receivers)
    stage = PathStage(sender_positions, corrupted_positions, receivers, receiver_positions)
    return path_patched_run(as_loaded(model), inputs, sender, stage, PathRuns())


@dataclass(frozen=True)
class PathStage:
    """Where one stage of path patching writes and reads: the sender's positions in the clean run
    (``corrupted_positions``: where its value is read in the corrupted run, default the same),
    the receivers (``"logits"``, ``"everything"`` or `Receiver` inputs) and where they read."""

    sender_positions: PositionsLike = "LT"
    corrupted_positions: PositionsLike | None = None
    receivers: Receivers = "logits"
    receiver_positions: PositionsLike = "LT"


@dataclass
class PathRuns:
    """The runs the senders of one input share, each computed when first needed and then kept.

    ``clean_cache``/``corrupted_cache``: every head's output ``z`` of the clean and corrupted runs
    (`head_outputs`; the clean one may hold the receivers' inputs too). ``clean_logits``: the
    clean run's last-position logits. ``prefix``: the clean run's KV cache of its first columns
    (`graftlens.models.prefix.run_prefix`), none of which a sender or receiver touches (see
    `first_touched_column`): both runs then compute only the columns after it. ``column_runs``:
    the one-column runs without sender, by columns. ``one_column``: with every head frozen and
    the sender and its receivers in one column per row, the sender run computes that column
    alone."""

    clean_cache: ActivationCache | None = None
    corrupted_cache: ActivationCache | None = None
    clean_logits: torch.Tensor | None = None
    prefix: object | None = None
    column_runs: dict = field(default_factory=dict)
    one_column: bool = True


def path_patched_run(
    loaded: LoadedModel, inputs: PathInputs, sender: Head | None, stage: PathStage, runs: PathRuns
) -> torch.Tensor:
    """Last-position logits ``[batch, vocab]`` of `path_patched_logits`, from the shared ``runs``
    (what `path_patching` and its prepared batches keep for many senders). ``sender=None``
    patches nothing: the result is the clean run."""
    if runs.clean_cache is None:
        _, runs.clean_cache = head_outputs(loaded, inputs.clean_ids, inputs.clean_mask)
    sent_value = _sent_value(loaded, inputs, sender, stage, runs) if sender is not None else None
    receiver_points = _receiver_points(loaded.adapter, stage.receivers)
    if receiver_points and sender is not None and sender[0] >= max(point.layer for point in receiver_points):
        # A head's q, k, v are read from the residual stream before its layer's attention: a
        # sender in that layer or after it reaches no receiver, and the clean run is the result.
        return _clean_logits(loaded, inputs, runs)
    columns = _sender_columns(inputs, sender, stage) if runs.one_column else None
    if columns is not None and not receiver_points:
        (logits_0, _), (logits, _) = _one_column_runs(loaded, inputs, columns, sent_value, receiver_points, runs)
        clean = _clean_logits(loaded, inputs, runs)
        return clean + (logits - logits_0).to(clean.dtype)
    if columns is not None:
        sent = _receiver_inputs(loaded, inputs, columns, sent_value, receiver_points, runs)
    else:
        edits = _frozen_heads(loaded, runs.clean_cache, stage.receivers)
        if sent_value is not None:
            layer, head, rows, bpos, value = sent_value
            point = Point("z", layer)
            edits[point] = _sender_edit(edits.get(point), rows, bpos, head, value, inputs.clean_ids.shape[1])
        with edit(loaded, edits), capture(loaded, receiver_points) as sent:
            logits = _clean_forward(loaded, inputs, runs.prefix)
        if not receiver_points:
            return logits
    where = resolve_positions(stage.receiver_positions, inputs.masks[0], inputs.clean_spans)  # [batch, pos]
    receiver_edits = {point: _receiver_edit(sent[point], where, heads) for point, heads in receiver_points.items()}
    with edit(loaded, receiver_edits):
        return _clean_forward(loaded, inputs, runs.prefix)


def _frozen_heads(loaded: LoadedModel, clean_cache: ActivationCache, receivers: Receivers) -> dict[Point, Edit]:
    """Every head frozen to the clean run (nothing frozen for ``receivers="everything"``)."""
    if receivers == "everything":
        return {}
    return {Point("z", layer): _replace_with(clean_cache[Point("z", layer)]) for layer in range(loaded.adapter.n_layers)}


def _sent_value(loaded: LoadedModel, inputs: PathInputs, sender: Head, stage: PathStage, runs: PathRuns) -> tuple:
    """``(layer, head, rows, clean positions, value [n, d_head])``: the sender's corrupted output
    at the positions it is written to."""
    layer, head = sender
    _check_head(loaded.adapter, layer, head, loaded.adapter.n_heads, "sender")
    if runs.corrupted_cache is None or Point("z", layer) not in runs.corrupted_cache:
        _, runs.corrupted_cache = head_outputs(loaded, inputs.corrupted_ids, inputs.corrupted_mask)
    clean_mask, corrupted_mask = inputs.masks
    where_base = resolve_positions(stage.sender_positions, clean_mask, inputs.clean_spans)
    read_at = stage.sender_positions if stage.corrupted_positions is None else stage.corrupted_positions
    where_source = resolve_positions(read_at, corrupted_mask, inputs.corrupted_spans)
    rows, bpos, spos = paired_positions(where_base, where_source, "sender")
    return layer, head, rows, bpos, runs.corrupted_cache[Point("z", layer)][rows, spos, head]


def _receiver_points(adapter, receivers: Receivers) -> dict[Point, list[int]]:
    """Receiver inputs by point (``q.3`` → heads), each checked against the model."""
    points: dict[Point, list[int]] = {}
    if isinstance(receivers, str):
        return points
    for r in receivers:
        if r.point not in ("q", "k", "v"):
            raise PathPatchingError(f"receiver {r}: a receiver reads a head's q, k or v, not {r.point!r}")
        _check_head(adapter, r.layer, r.head, adapter.n_heads if r.point == "q" else adapter.n_kv_heads, f"receiver {r}")
        points.setdefault(Point(r.point, r.layer), []).append(r.head)
    return points


def _clean_forward(loaded: LoadedModel, inputs: PathInputs, prefix: object | None) -> torch.Tensor:
    """The clean run's last-position logits (continuing ``prefix`` when given), under the edits in force."""
    if prefix is not None:
        from graftlens.models.prefix import continue_prefix

        return continue_prefix(loaded, prefix, inputs.clean_ids, inputs.masks[0])
    return run_logits(loaded, inputs.clean_ids, inputs.clean_mask, last_only=True)[:, -1]


def _clean_logits(loaded: LoadedModel, inputs: PathInputs, runs: PathRuns) -> torch.Tensor:
    """The clean run's last-position logits ``[batch, vocab]``, computed once and kept in ``runs``."""
    if runs.clean_logits is None:
        runs.clean_logits = _clean_forward(loaded, inputs, runs.prefix)
    return runs.clean_logits


def _one_column_runs(loaded, inputs, columns, sent_value, receiver_points, runs: PathRuns) -> tuple[tuple, tuple]:
    """The sender run computed one column per row, without the sender (kept in ``runs``: the
    same for every sender of these columns) and with it: ``((logits, inputs), (logits, inputs))``.
    Every head frozen, each column's residual stream depends on that column alone, so the run
    computes just the column a row needs (the sender's, where its receivers are); what the sender
    changes is then added to the clean run's values (a sender that changes nothing leaves them
    exactly as they are)."""
    key = (tuple(columns.tolist()), tuple(receiver_points))
    if key not in runs.column_runs:
        runs.column_runs[key] = _one_column_run(loaded, inputs, columns, runs.clean_cache, None, receiver_points)
    return runs.column_runs[key], _one_column_run(loaded, inputs, columns, runs.clean_cache, sent_value, receiver_points)


def _receiver_inputs(loaded, inputs, columns, sent_value, receiver_points, runs: PathRuns) -> ActivationCache:
    """Each receiver's input in the sender run, from the one-column runs: its clean value plus
    what the sender changed."""
    (_, sent_0), (_, sent) = _one_column_runs(loaded, inputs, columns, sent_value, receiver_points, runs)
    missing = [p for p in receiver_points if p not in runs.clean_cache]
    if missing:  # the receivers' clean inputs
        with capture(loaded, missing) as more, torch.no_grad():
            run_logits(loaded, inputs.clean_ids, inputs.clean_mask, last_only=True)
        runs.clean_cache = ActivationCache({**runs.clean_cache, **more})
    return ActivationCache({p: runs.clean_cache[p] + (sent[p] - sent_0[p]) for p in receiver_points})


def _sender_columns(inputs: PathInputs, sender: Head | None, stage: PathStage) -> torch.Tensor | None:
    """``LongTensor[batch]``: the one column each clean row's sender run must compute (the sender's
    column, where the receivers are too; the last one for the logits), or None when heads are not
    frozen, nothing is sent, or a row needs more than one column."""
    if stage.receivers == "everything" or sender is None:
        return None
    clean_mask, _ = inputs.masks
    where = resolve_positions(stage.sender_positions, clean_mask, inputs.clean_spans)
    if stage.receivers == "logits":
        where = where.clone()
        where[:, -1] = True  # left-padded or not, the logits are read at the last column
    else:
        where = where | resolve_positions(stage.receiver_positions, clean_mask, inputs.clean_spans)
    if not bool((where.sum(1) == 1).all()) or not bool(clean_mask.gather(1, where.float().argmax(1, keepdim=True)).all()):
        return None
    return where.float().argmax(1)


def _one_column_run(loaded, inputs: PathInputs, columns: torch.Tensor, clean_cache: ActivationCache, sender, receiver_points):
    """The frozen-head run on one column per row (a ``[batch, 1]`` forward at the column's position
    id), every head's output the clean run's there but the ``sender``'s (``(layer, head, rows,
    positions, value)`` or None): its logits and the receivers' inputs, scattered back to full width."""
    clean_mask, _ = inputs.masks
    device = inputs.clean_ids.device
    rows = torch.arange(inputs.clean_ids.shape[0], device=device)
    cols = columns.to(device)
    ids = inputs.clean_ids[rows, cols][:, None]  # [batch, 1]
    positions = position_ids_for(clean_mask)[rows, cols][:, None]
    frozen = {}
    for layer in range(loaded.adapter.n_layers):
        z = clean_cache[Point("z", layer)][rows, cols]  # [batch, head, d_head]
        if sender is not None and sender[0] == layer:
            _, head, s_rows, _, value = sender  # one sender position per row: the row's column
            z = z.clone()
            z[s_rows.to(z.device), head] = value.to(z.device, z.dtype)
        frozen[Point("z", layer)] = _replace_with(z[:, None])
    with edit(loaded, frozen), capture(loaded, receiver_points) as sent_one, torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, logits_to_keep=1).logits
    sent = ActivationCache()
    for point in receiver_points:
        value = sent_one[point]  # [batch, 1, head, d_head]
        full = value.new_zeros((value.shape[0], inputs.clean_ids.shape[1], *value.shape[2:]))
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


def first_touched_column(
    inputs: PathInputs, sender_positions: PositionsLike, receivers: Receivers, receiver_positions: PositionsLike
) -> int:
    """The first column of the (left-padded) clean batch that a path-patched run changes: every
    column before it is the clean run's own, so a KV cache of them can be shared (0: none)."""
    first = _first_columns(inputs, sender_positions, receivers, receiver_positions)
    return int(first.min()) if first is not None else 0


@dataclass(frozen=True)
class PathPatchingScores:
    """Per sender head: the mean relative change of the target's probability,
    ``(p_patched - p_clean) / p_clean`` (``scores[layer, head]``), and the clean probability (with
    another ``metric``, its relative change and clean values)."""

    scores: torch.Tensor  # [layer, head]
    clean_prob: torch.Tensor  # [batch]: the metric of the clean run

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


@dataclass
class _Part:
    """Rows of a batch that one sender run serves: their indices in the batch (``LongTensor[n]``),
    their inputs, and the runs their senders share (the KV cache of the columns before the first
    one they touch included)."""

    rows: torch.Tensor
    inputs: PathInputs
    runs: PathRuns


class PreparedBatch:
    """A batch made ready for every sender of one path-patching stage (sender and receiver
    positions fixed): the clean and corrupted runs once, then the rows split by the first column any
    edit touches, so each part continues its own shared prefix (the queried box sits at another
    column in each prompt; the earliest one would set everyone's prefix otherwise)."""

    def __init__(
        self,
        model: LoadedModel | nn.Module,
        inputs: PathInputs,
        *,
        sender_positions: PositionsLike = "LT",
        corrupted_positions: PositionsLike | None = None,
        receivers: Receivers = "logits",
        receiver_positions: PositionsLike = "LT",
        share_prefix: bool = True,
    ) -> None:
        from graftlens.models.prefix import run_prefix

        self.model = as_loaded(model)
        self.batch = inputs.clean_ids.shape[0]
        self.stage = PathStage(sender_positions, corrupted_positions, receivers, receiver_positions)
        points = sorted({Point(r.point, r.layer) for r in receivers}) if not isinstance(receivers, str) else []
        with torch.no_grad():
            clean_logits, clean_cache = head_outputs(self.model, inputs.clean_ids, inputs.clean_mask, points)
            _, corrupted_cache = head_outputs(self.model, inputs.corrupted_ids, inputs.corrupted_mask)
        self.clean_logits = clean_logits
        first = _first_columns(inputs, sender_positions, receivers, receiver_positions) if share_prefix else None
        groups = {int(c): (first == c).nonzero().flatten() for c in first.unique()} if first is not None else {0: None}
        self.parts: list[_Part] = []
        for cut, rows in sorted(groups.items()):
            part_inputs = inputs if rows is None else inputs.select(rows)
            take = (lambda t: t) if rows is None else (lambda t, r=rows: t[r.to(t.device)])
            prefix = run_prefix(self.model, part_inputs.clean_ids, part_inputs.masks[0], cut) if cut > 0 else None
            runs = PathRuns(
                clean_cache=ActivationCache({p: take(t) for p, t in clean_cache.items()}),
                corrupted_cache=ActivationCache({p: take(t) for p, t in corrupted_cache.items()}),
                clean_logits=take(clean_logits),
                prefix=prefix,
            )
            self.parts.append(_Part(torch.arange(self.batch) if rows is None else rows, part_inputs, runs))

    def logits(self, sender: Head | None) -> torch.Tensor:
        """Last-position logits ``[batch, vocab]`` of the path-patched run for ``sender``."""
        out = self.clean_logits.new_empty(self.clean_logits.shape)
        for part in self.parts:
            out[part.rows.to(out.device)] = path_patched_run(self.model, part.inputs, sender, self.stage, part.runs)
        return out


def _first_columns(inputs: PathInputs, sender_positions, receivers, receiver_positions) -> torch.Tensor | None:
    """Per row, the first column an edit touches (None when the batch is not left-padded)."""
    clean_mask, _ = inputs.masks
    if not bool(clean_mask[:, -1].all()):
        return None
    where = resolve_positions(sender_positions, clean_mask, inputs.clean_spans)
    if not isinstance(receivers, str):
        where = where | resolve_positions(receiver_positions, clean_mask, inputs.clean_spans)
    if not bool(where.any(1).all()):
        return None
    return where.float().argmax(1).cpu()  # the first True of each row


@checked
def path_patching(
    model: LoadedModel | nn.Module,
    inputs: PathInputs,
    target_ids: torch.Tensor,
    *,
    senders: Sequence[Head] | None = None,
    sender_positions: PositionsLike = "LT",
    corrupted_positions: PositionsLike | None = None,
    receivers: Receivers = "logits",
    receiver_positions: PositionsLike = "LT",
    metric: Metric = prob,
) -> PathPatchingScores:
    """Path-patch every sender (default: every head) and score it as Prakash et al. do; unscored
    heads are 0. With a ``metric`` other than the target's probability the score is
    ``(M_patched − M_clean) / |M_clean|``.

    The columns before the first one any sender or receiver touches are run once, with a KV
    cache, and every sender continues from there (the same result, computed on fewer columns).

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        inputs: the clean and the corrupted prompts (`PathInputs`), or a ``(clean, corrupted)``
            pair of `Prompts` (whose clean targets fill ``target_ids``).
        target_ids: ``LongTensor[batch]``, the token each prompt is scored on.
        senders: the heads path-patched, one at a time (default: every head).
        sender_positions: where each sender's output is patched, a selector in prompt coordinates
            (``"FE"``, ``"LT"``, ``"(FE+LT)^C"``, index lists) on the clean run.
        corrupted_positions: where the corrupted run is read (default: ``sender_positions``).
        receivers: ``"logits"`` (the direct path), ``"everything"``, or `Receiver` inputs of later
            heads.
        receiver_positions: where the receivers read the patched stream.
        metric: a function of the last-position logits ``[batch, vocab]`` and ``target_ids``
            giving one value per prompt: `prob` (the default), `logprob`, `logit_diff` (with a
            foil) or `rank` from `graftlens.interventions.metrics`, or your own.

    Returns:
        PathPatchingScores: ``scores[layer, head]``, the relative change of the target's
        probability ``(p_patched − p_clean) / p_clean`` when that head is the sender;
        ``top(k)`` gives the heads with the most negative scores.

    Examples:
        Two stages: senders straight to the logits, then through the top heads' queries:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> from graftlens import PathInputs, Receiver
        >>> clean = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        >>> inputs = PathInputs(clean, torch.tensor([[5, 13, 7, 8], [9, 14, 11, 12]]))
        >>> target = torch.tensor([3, 4])
        >>> direct = graftlens.path_patching(m, inputs, target, receivers="logits")
        >>> direct.scores.shape
        torch.Size([4, 4])
        >>> queries = [Receiver("q", layer, head) for layer, head in direct.top(2)]
        >>> via_q = graftlens.path_patching(m, inputs, torch.tensor([3, 4]), receivers=queries)
        >>> via_q.scores.shape
        torch.Size([4, 4])
    """
    check_receivers("path_patching", receivers)
    check_metric("path_patching", metric)
    adapter = as_loaded(model).adapter
    with torch.no_grad():
        prepared = PreparedBatch(
            model,
            inputs,
            sender_positions=sender_positions,
            corrupted_positions=corrupted_positions,
            receivers=receivers,
            receiver_positions=receiver_positions,
        )
        clean_prob = per_prompt(metric, prepared.clean_logits, target_ids, "path_patching")
        scores = torch.zeros(adapter.n_layers, adapter.n_heads)
        if senders is None:
            senders = [(layer, head) for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]
        for layer, head in senders:
            p = per_prompt(metric, prepared.logits((layer, head)), target_ids, "path_patching")
            scores[layer, head] = ((p - clean_prob) / clean_prob.abs()).mean()
    return PathPatchingScores(scores, clean_prob)


def prepared_bytes(prepared: PreparedBatch) -> int:
    """About how much memory a prepared batch holds (activations and KV prefixes)."""
    from graftlens.models.prefix import cache_bytes

    total = 0
    for part in prepared.parts:
        runs = part.runs
        for t in (*runs.clean_cache.values(), *runs.corrupted_cache.values()):
            total += t.numel() * t.element_size()
        total += cache_bytes(runs.prefix) if runs.prefix is not None else 0
    return total
