"""Activation patching (one model, two inputs) and cross-model activation patching (two models, one input).

A `Patch` writes a *source* activation into a run at some positions (and, for per-head
points, some heads). Activation patching takes the source from the same model on another input
(clean → corrupted); CMAP (Prakash et al.) takes it from another model — the finetuned one —
on the same input, and writes it into the recipient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from graftlens.interventions.continuation import CachedRun
from graftlens.interventions.hooks import ActivationCache, Edit, PointLike, capture, edit
from graftlens.interventions.metrics import Metric, check_metric, per_prompt, prob
from graftlens.interventions.patches import Patch, PatchError, chained
from graftlens.interventions.points import Point, parse_point
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.run import run_logits
from graftlens.positions import PositionsLike, Spans, resolve_positions


@checked
def run_with_cache(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    points: Iterable[PointLike],
    last_only: bool = False,
    grad: bool = False,
) -> tuple[torch.Tensor, ActivationCache]:
    """Logits and the activations at ``points`` of one forward pass (with ``grad``, both keep the graph).

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        input_ids: ``LongTensor[batch, pos]``, left-padded; or a `Prompts` (its mask and spans
            fill the arguments left unset), or text.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding.
        points: the points to capture (`Point` objects or names such as ``"z.0"``,
            ``"resid_pre.3"``).
        last_only: compute the unembedding at the last position only (``[batch, 1, vocab]``).
        grad: keep the graph of the logits and of the captured activations.

    Returns:
        tuple[torch.Tensor, ActivationCache]: logits ``[batch, pos, vocab]`` (``[batch, 1, vocab]`` with
        ``last_only``, which skips the unembedding elsewhere) and an `ActivationCache`.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7]])
        >>> logits, cache = graftlens.run_with_cache(m, ids, None, ["z.0"], last_only=True)
        >>> logits.shape, cache["z.0"].shape
        (torch.Size([1, 1, 96]), torch.Size([1, 3, 4, 8]))
    """
    with capture(model, points, keep_graph=grad) as cache:
        logits = run_logits(model, input_ids, attention_mask, last_only, grad=grad)
    return logits, cache


@checked
def patched_logits(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    patches: Sequence[Patch],
    last_only: bool = False,
    spans: Sequence[Spans] | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """Logits of ``model`` on ``input_ids`` with every patch written in (one forward pass).

    Args:
        model: the model patched into.
        input_ids: ``LongTensor[batch, pos]``, left-padded; or a `Prompts`, or text.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding.
        patches: `Patch` objects; several patches of one point apply in turn.
        last_only: compute the unembedding at the last position only.
        spans: per example, the named spans the patches' positions name.
        grad: keep the autograd graph.

    Returns:
        logits ``[batch, pos, vocab]`` (``[batch, 1, vocab]`` with ``last_only``).

    Examples:
        A run patched into itself is the run:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> plain, cache = graftlens.run_with_cache(m, ids, None, ["z.1"])
        >>> patch = graftlens.Patch(graftlens.Point("z", 1), cache["z.1"])
        >>> same = graftlens.patched_logits(m, ids, None, [patch])
        >>> torch.equal(same, plain)
        True
    """
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    edits: dict[Point, list[Edit]] = {}
    for p in patches:
        where = None if p.positions is None else resolve_positions(p.positions, mask, spans)
        edits.setdefault(p.point, []).append(p.as_edit(where))

    with edit(model, {point: chained(fns) for point, fns in edits.items()}):
        return run_logits(model, input_ids, attention_mask, last_only, grad=grad)


# ---- activation patching sweeps -----------------------------------------------------------------


@dataclass(frozen=True)
class PatchingSweep:
    """Result of `activation_patching`: the metric after each single patch.

    ``scores[layer, j]``: the metric's mean (the target's probability by default) when the clean
    activation of ``point_name`` at layer ``layer`` and column ``j`` (a position, or a head with
    ``by="head"``) is written into the corrupted run; ``scores[layer, j, h]`` with
    ``by="position_head"``: head ``h`` at column ``j`` alone. ``clean``/``corrupted`` are the
    unpatched values; `recovered` rescales to 0 (corrupted) .. 1 (clean)."""

    point_name: str
    by: str  # "position" | "head" | "position_head"
    scores: torch.Tensor  # [layer, pos], [layer, head] or [layer, pos, head]
    clean: float
    corrupted: float

    @property
    def recovered(self) -> torch.Tensor:
        gap = self.clean - self.corrupted
        return (self.scores - self.corrupted) / gap if gap != 0 else torch.full_like(self.scores, float("nan"))


def _mean(metric: Metric, logits: torch.Tensor, target_ids: torch.Tensor, who: str = "activation_patching") -> float:
    """The metric's mean over prompts, from last-position logits ``[batch, 1, vocab]``."""
    return float(per_prompt(metric, logits, target_ids, who).mean())


def _sweep_inputs(loaded: LoadedModel, clean_ids, corrupted_ids, point_name: str, layers, by: str) -> list[Point]:
    if clean_ids.shape != corrupted_ids.shape:
        raise PatchError(
            f"clean and corrupted inputs must be token-aligned: shapes {list(clean_ids.shape)} and {list(corrupted_ids.shape)}"
        )
    if by not in ("position", "head", "position_head"):
        raise PatchError(f"activation_patching by={by!r}: choose 'position', 'head' or 'position_head'")
    layers = list(range(loaded.adapter.n_layers)) if layers is None else list(layers)
    points = [Point(point_name, layer) for layer in layers]
    if by != "position" and not points[0].per_head:
        raise PatchError(f"by={by!r} needs a per-head point (z, q, k, v), got {point_name!r}")
    return points


TOKENS_PER_PASS = 8192  # variants batched into one pass: at most this many (row, column) tokens


def _position_groups(changed: list[int], batch: int, seq: int, tokens_per_pass: int) -> list[list[int]]:
    """The ``changed`` columns, in order, grouped as variants of one pass each, every group
    continuing from its first column: as many as fit ``tokens_per_pass`` (each variant computes
    every column from the group's first)."""
    groups: list[list[int]] = []
    for j in changed:
        if groups and batch * (len(groups[-1]) + 1) * (seq - groups[-1][0]) <= tokens_per_pass:
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


@checked
def activation_patching(
    model: LoadedModel | nn.Module,
    clean_ids: torch.Tensor,
    corrupted_ids: torch.Tensor,
    target_ids: torch.Tensor,
    point_name: str = "resid_pre",
    attention_mask: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    by: str = "position",
    approx: bool = False,
    metric: Metric = prob,
) -> PatchingSweep:
    """Patch the clean run's ``point_name`` into the corrupted run, one layer × position (or
    layer × head at every position, or layer × position × head) at a time, and record the
    metric's mean over prompts.

    Only what a patch can change is computed (`continuation`): a
    patch at layer ``l`` and column ``j`` continues the corrupted run from there, and the heads of
    one layer are patched as variants of one pass of up to ``TOKENS_PER_PASS`` (row, column) tokens. The result
    equals `activation_patching_loop`, one full forward per patch, to float rounding.

    With ``approx``, `attribution_patching` instead: a first-order estimate of every score
    from one forward and one backward pass.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        clean_ids: ``LongTensor[batch, pos]``, the clean prompts (or a `Prompts`, or text);
            the source of every patch.
        corrupted_ids: ``LongTensor[batch, pos]`` of the same shape, token-aligned with the
            clean prompts: the run patched into.
        target_ids: ``LongTensor[batch]``, the token each prompt is scored on.
        point_name: the point patched: ``resid_pre``, ``resid_post``, ``attn_out``, ``mlp_out`` or a
            per-head point (``z``, ``q``, ``k``, ``v``).
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding. Shared by both runs.
        layers: the layers to patch (default: all).
        by: ``"position"`` (one patch per layer × position), ``"head"`` (per-head points: one
            patch per layer × head, at every position) or ``"position_head"`` (per-head points: one
            patch per layer × position × head, TransformerLens's patching of head outputs by position).
        approx: estimate the scores by `attribution_patching` instead.
        metric: a function of the last-position logits ``[batch, vocab]`` and ``target_ids``
            giving one value per prompt: `prob` (the default), `logprob`, `logit_diff` (with a
            foil) or `rank` from `graftlens.interventions.metrics`, or your own.

    Returns:
        PatchingSweep: ``scores`` ``[layer, pos]`` (``[layer, head]`` with ``by="head"``,
        ``[layer, pos, head]`` with ``by="position_head"``), the unpatched ``clean`` and ``corrupted`` values,
        and ``recovered`` (0 = corrupted … 1 = clean).

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> clean = torch.tensor([[5, 6, 7, 8], [9, 6, 7, 8]])
        >>> corrupted = torch.tensor([[5, 10, 7, 8], [9, 11, 7, 8]])
        >>> target = torch.tensor([3, 4])
        >>> sweep = graftlens.activation_patching(m, clean, corrupted, target, "resid_pre")
        >>> # column 0 is the same in both runs: nothing to recover there
        >>> sweep.scores.shape, sweep.recovered[:, 0].abs().max().item()
        (torch.Size([4, 4]), 0.0)
        >>> by_head = graftlens.activation_patching(m, clean, corrupted, target, "z", by="head")
        >>> by_head.scores.shape
        torch.Size([4, 4])
    """

    check_metric("activation_patching", metric)
    if approx:
        return attribution_patching(model, clean_ids, corrupted_ids, target_ids, point_name, attention_mask, layers, by, metric)

    loaded = as_loaded(model)
    points = _sweep_inputs(loaded, clean_ids, corrupted_ids, point_name, layers, by)
    clean_logits, clean_cache = run_with_cache(loaded, clean_ids, attention_mask, points, last_only=True)
    run = CachedRun(loaded, corrupted_ids, attention_mask, points)

    def measure(logits: torch.Tensor) -> float:  # [batch, 1, vocab] → the metric's mean over prompts
        return _mean(metric, logits, target_ids)

    corrupted = measure(run.logits[:, None])
    # A patch writing what the corrupted run already holds changes nothing (in minimal pairs, every
    # column before the first differing token): its score is the corrupted one, and a patch that
    # does change something changes nothing before its first differing column.
    per_point = {"position": _patch_positions, "head": _patch_heads, "position_head": _patch_position_heads}[by]
    scores = torch.stack([per_point(run, point, clean_cache[point], measure, corrupted) for point in points])
    return PatchingSweep(point_name, by, scores, measure(clean_logits), corrupted)


def _patch_positions(run: CachedRun, point: Point, source: torch.Tensor, measure, corrupted: float) -> torch.Tensor:
    """``[pos]``: the metric with ``point`` patched from ``source`` at one column at a time, the
    columns of a group continuing the corrupted run together as variants of one pass."""
    batch, seq = source.shape[:2]
    new = source != run.captured[point]  # where the patch writes values the corrupted run does not hold
    scores = torch.full((seq,), corrupted)
    changed = [j for j in range(seq) if bool(new[:, j].any())]
    for group in _position_groups(changed, batch, seq, TOKENS_PER_PASS):

        def write_columns(x: torch.Tensor, group: list[int] = group) -> torch.Tensor:
            x = x.clone().unflatten(0, (batch, len(group)))  # [batch, variant, columns from the first, ...]
            for v, j in enumerate(group):
                x[:, v, j - group[0]] = source[:, j].to(x.dtype)
            return x.flatten(0, 1)

        with edit(run.model, {point: write_columns}):
            logits = run.continued(point.layer, group[0], repeat=len(group)).unflatten(0, (batch, len(group)))
        for v, j in enumerate(group):
            scores[j] = measure(logits[:, v, None])
    return scores


def _patch_heads(run: CachedRun, point: Point, source: torch.Tensor, measure, corrupted: float) -> torch.Tensor:
    """``[head]``: the metric with one head of ``point`` patched from ``source`` at every
    position, the heads of a pass as its variants."""
    batch, seq, n_heads = source.shape[:3]
    head_differs = (source != run.captured[point]).any(-1).any(0)  # [pos, head]
    scores = torch.full((n_heads,), corrupted)
    changed = [h for h in range(n_heads) if bool(head_differs[:, h].any())]
    per_pass = max(1, TOKENS_PER_PASS // (batch * seq))
    for start in range(0, len(changed), per_pass):
        heads = changed[start : start + per_pass]
        first = min(int(head_differs[:, h].nonzero()[0]) for h in heads)  # nothing changes before it

        def write_heads(x: torch.Tensor, heads: list[int] = heads, first: int = first) -> torch.Tensor:
            x = x.clone().unflatten(0, (batch, len(heads)))  # [batch, variant, columns from first, head, d]
            for v, h in enumerate(heads):
                x[:, v, :, h] = source[:, first:, h].to(x.dtype)
            return x.flatten(0, 1)

        with edit(run.model, {point: write_heads}):
            logits = run.continued(point.layer, first, repeat=len(heads)).unflatten(0, (batch, len(heads)))
        for v, h in enumerate(heads):
            scores[h] = measure(logits[:, v, None])
    return scores


def _patch_position_heads(run: CachedRun, point: Point, source: torch.Tensor, measure, corrupted: float) -> torch.Tensor:
    """``[pos, head]``: the metric with one head of ``point`` patched from ``source`` at one
    column, for every (column, head) the patch changes; the heads of a column continue the
    corrupted run from that column together, as variants of one pass."""
    batch, seq, n_heads = source.shape[:3]
    differs = (source != run.captured[point]).any(-1).any(0)  # [pos, head]
    scores = torch.full((seq, n_heads), corrupted)
    for j in range(seq):
        changed = [h for h in range(n_heads) if bool(differs[j, h])]
        per_pass = max(1, TOKENS_PER_PASS // (batch * (seq - j)))
        for start in range(0, len(changed), per_pass):
            heads = changed[start : start + per_pass]

            def write_cells(x: torch.Tensor, heads: list[int] = heads, j: int = j) -> torch.Tensor:
                x = x.clone().unflatten(0, (batch, len(heads)))  # [batch, variant, columns from j, head, d]
                for v, h in enumerate(heads):
                    x[:, v, 0, h] = source[:, j, h].to(x.dtype)
                return x.flatten(0, 1)

            with edit(run.model, {point: write_cells}):
                logits = run.continued(point.layer, j, repeat=len(heads)).unflatten(0, (batch, len(heads)))
            for v, h in enumerate(heads):
                scores[j, h] = measure(logits[:, v, None])
    return scores


@checked
def attribution_patching(
    model: LoadedModel | nn.Module,
    clean_ids: torch.Tensor,
    corrupted_ids: torch.Tensor,
    target_ids: torch.Tensor,
    point_name: str = "resid_pre",
    attention_mask: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    by: str = "position",
    metric: Metric = prob,
) -> PatchingSweep:
    """Attribution patching: the first-order estimate of `activation_patching`'s scores,
    ``corrupted + Σ (clean − corrupted activation) · ∂metric/∂activation`` with the gradient taken
    on the corrupted run, summed over the features of each (layer, position) — or, with
    ``by="head"``, over each head's features at every position. One forward and one backward pass
    give every score; how well they track the exact ones is on the docs' performance page.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        clean_ids: ``LongTensor[batch, pos]``, the clean prompts (or a `Prompts`, or text);
            the source of every patch.
        corrupted_ids: ``LongTensor[batch, pos]`` of the same shape, token-aligned with the
            clean prompts: the run patched into.
        target_ids: ``LongTensor[batch]``, the token each prompt is scored on.
        point_name: the point scored, as for `activation_patching`.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding. Shared by both runs.
        layers: the layers to score (default: all).
        by: ``"position"``, ``"head"`` or ``"position_head"``, as for `activation_patching`.
        metric: a function of the last-position logits ``[batch, vocab]`` and ``target_ids``
            giving one value per prompt: `prob` (the default), `logprob`, `logit_diff` (with a
            foil) or `rank` from `graftlens.interventions.metrics`, or your own.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> clean, corrupted = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 10, 7, 8]])
        >>> target = torch.tensor([3])
        >>> approx = graftlens.attribution_patching(m, clean, corrupted, target, "resid_pre")
        >>> approx.scores.shape
        torch.Size([4, 4])
    """
    check_metric("attribution_patching", metric)
    loaded = as_loaded(model)
    points = _sweep_inputs(loaded, clean_ids, corrupted_ids, point_name, layers, by)
    clean_logits, clean_cache = run_with_cache(loaded, clean_ids, attention_mask, points, last_only=True)
    deltas: dict[Point, torch.Tensor] = {}

    def through_delta(point: Point) -> Edit:
        def add(x: torch.Tensor) -> torch.Tensor:  # x + 0, with the 0 a leaf to differentiate against
            deltas[point] = torch.zeros_like(x, requires_grad=True)
            return x + deltas[point]

        return add

    with capture(loaded, points) as own, edit(loaded, {p: through_delta(p) for p in points}):
        logits = run_logits(loaded, corrupted_ids, attention_mask, last_only=True, grad=True)  # [batch, 1, vocab]
    value = per_prompt(metric, logits, target_ids, "attribution_patching").mean()
    if not value.requires_grad:
        raise PatchError("attribution_patching: the metric has no gradient (rank is not differentiable): use activation_patching")
    grads = torch.autograd.grad(value, [deltas[p] for p in points])
    scores = []
    for point, grad in zip(points, grads):
        effect = ((clean_cache[point] - own[point]) * grad).detach().double()  # [batch, pos, ...]
        summed = {"head": (0, 1, 3), "position_head": (0, 3)}.get(by)  # [head] / [pos, head]
        scores.append(effect.sum(summed) if summed else effect.flatten(2).sum((0, 2)))
    corrupted = float(value.detach())
    estimates = (torch.stack(scores) + corrupted).float()  # [layer, pos], [layer, head] or [layer, pos, head]
    return PatchingSweep(point_name, by, estimates, _mean(metric, clean_logits, target_ids), corrupted)


def activation_patching_loop(
    model: LoadedModel | nn.Module,
    clean_ids: torch.Tensor,
    corrupted_ids: torch.Tensor,
    target_ids: torch.Tensor,
    point_name: str = "resid_pre",
    attention_mask: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    by: str = "position",
    metric: Metric = prob,
) -> PatchingSweep:
    """`activation_patching` the straightforward way: one full forward pass per patch, as a
    hand-written loop in any library does. The reference the fast sweep is tested and
    benchmarked against."""
    loaded = as_loaded(model)
    points = _sweep_inputs(loaded, clean_ids, corrupted_ids, point_name, layers, by)
    clean_logits, clean_cache = run_with_cache(loaded, clean_ids, attention_mask, points, last_only=True)
    corrupted = _mean(metric, run_logits(loaded, corrupted_ids, attention_mask, last_only=True), target_ids)
    batch, seq = clean_ids.shape
    heads = clean_cache[points[0]].shape[2] if by != "position" else 1
    cells = {"position": [(j, None) for j in range(seq)], "head": [(None, h) for h in range(heads)]}.get(
        by, [(j, h) for j in range(seq) for h in range(heads)]
    )
    scores = torch.empty(len(points), len(cells))
    for i, point in enumerate(points):
        for c, (j, h) in enumerate(cells):
            where = None
            if j is not None:
                where = torch.zeros(batch, seq, dtype=torch.bool)
                where[:, j] = True
            patch = Patch(point, clean_cache[point], where, None if h is None else (h,))
            logits = patched_logits(loaded, corrupted_ids, attention_mask, [patch], last_only=True)
            scores[i, c] = _mean(metric, logits, target_ids)
    if by == "position_head":
        scores = scores.unflatten(1, (seq, heads))
    return PatchingSweep(point_name, by, scores, _mean(metric, clean_logits, target_ids), corrupted)


# ---- cross-model activation patching ------------------------------------------------------------


def check_same_shapes(recipient: LoadedModel, donor: LoadedModel) -> None:
    """CMAP needs activations of equal shapes: same family, layers, heads and widths."""
    a, b = recipient.adapter, donor.adapter
    if (a.model_type, a.dims) != (b.model_type, b.dims):
        raise PatchError(
            f"cannot patch activations of {donor.spec!r} ({b.model_type}, {b.dims}) "
            f"into {recipient.spec!r} ({a.model_type}, {a.dims})"
        )


@checked
def cross_model_patched_logits(
    recipient: LoadedModel | nn.Module,
    donor_activations: Mapping[Point, torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    heads: Mapping[PointLike, Sequence[int] | None],
    positions: PositionsLike = None,
    *,
    spans: Sequence[Spans] | None = None,
    last_only: bool = False,
    grad: bool = False,
) -> torch.Tensor:
    """Logits of ``recipient`` with the donor's activations (``donor_activations``, captured on the same
    input by `run_with_cache`) written in at ``heads`` (point → head list, None = all
    heads or the whole stream point) and ``positions`` (a selector in prompt coordinates, as for
    `Patch`; None = every position).

    Args:
        recipient: the model patched into (a `LoadedModel` or an HF causal LM).
        donor_activations: point → the donor's activation on the same input (a `run_with_cache`
            cache).
        input_ids: ``LongTensor[batch, pos]``, left-padded; or a `Prompts` (its mask and spans
            fill the arguments left unset), or text.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding.
        heads: point → the heads written (None: every head, or the whole stream point).
        positions: where to write, a selector in prompt coordinates (``"LT"``, ``"FE+LT"``, index
            lists); None: every position.
        spans: per example, the named spans (``FE``, ``subject``, ...) the position selectors name.
        last_only: compute the unembedding at the last position only (``[batch, 1, vocab]``).
        grad: keep the autograd graph (for gradients through the result).

    Returns:
        logits ``[batch, pos, vocab]`` (``[batch, 1, vocab]`` with ``last_only``). Many
        configurations on one batch: `cmap_sweep`.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ft = tiny_model("llama", seed=1)
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> _, ft_cache = graftlens.run_with_cache(ft, ids, None, ["z.2", "z.3"])
        >>> heads = {"z.2": None, "z.3": [0, 1]}
        >>> out = graftlens.cross_model_patched_logits(m, ft_cache, ids, None, heads, "LT")
        >>> out[:, -1].shape
        torch.Size([1, 96])
    """
    patches = []
    for key, hs in heads.items():
        point = parse_point(key)
        if point not in donor_activations:
            raise PatchError(f"the donor activations hold no {point}; capture it first")
        patches.append(Patch(point, donor_activations[point], positions, None if hs is None else tuple(hs)))
    return patched_logits(recipient, input_ids, attention_mask, patches, last_only, spans, grad)
