"""Sweeps of activation-level interventions on one batch, at recipe speed.

Each sweep runs the plain model once and keeps that run (`CachedRun`); every
configuration then computes only what it can change: the layers from its lowest patched or
knocked-out layer, and the columns from its first patched or target column. The caches stay
inside the sweep: a caller passes the model, the inputs, the interventions and the positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.interventions.continuation import CachedRun
from graftlens.interventions.hooks import PointLike
from graftlens.interventions.patches import Patch
from graftlens.interventions.patching import check_same_shapes, run_with_cache
from graftlens.interventions.points import Point, parse_point
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.prefix import VARIANT_ROWS
from graftlens.models.run import check_batch
from graftlens.positions import PositionsLike, Spans

HeadChoice = Sequence[int] | None  # the heads of a per-head point; None: all heads (or the whole stream point)


@checked
def cmap_sweep(
    recipient: LoadedModel | nn.Module,
    donor: LoadedModel | nn.Module,
    configs: Mapping[str, Mapping[PointLike, HeadChoice]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    positions: PositionsLike = None,
    spans: Sequence[Spans] | None = None,
) -> dict[str, torch.Tensor]:
    """Cross-model activation patching (CMAP), one configuration at a time: the donor's
    activations, on the same input, written into the recipient.

    Args:
        recipient: the model patched into.
        donor: a model of the recipient's family and shapes (its finetuned copy, say).
        configs: configuration name → ``{point: heads}``, e.g. ``{"z.12": None, "z.13": [0, 4]}``
            (None: every head, or the whole stream point).
        input_ids: ``LongTensor[batch, pos]``, left-padded; or a `Prompts`, or text.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding.
        positions: where to patch, a selector in prompt coordinates (``"LT"``, ``"FE+LT"``, ...);
            None patches every position.
        spans: per example, the named spans the selector names.

    Returns:
        configuration name → logits ``[batch, vocab]`` at the last position, equal to
        ``cross_model_patched_logits(...)[:, -1]`` for that configuration (to float rounding).

    The donor runs once, capturing every point any configuration names; the recipient runs once,
    and the configurations continue that run together, as variants of one pass (up to 256 rows),
    from their lowest patched layer and first patched column: the weights are read once per pass.

    Examples:
        >>> import graftlens, torch
        >>> from graftlens.models import tiny_model
        >>> recipient, ft = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
        >>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        >>> configs = {"L2-3": {"z.2": None, "z.3": None}, "L3": {"z.3": None}}
        >>> out = graftlens.cmap_sweep(recipient, ft, configs, ids, positions="LT")
        >>> out["L3"].shape
        torch.Size([2, 96])
    """
    recipient, donor = as_loaded(recipient), as_loaded(donor)
    check_same_shapes(recipient, donor)
    check_batch(input_ids, attention_mask, spans)
    parsed: dict[str, dict[Point, HeadChoice]] = {}
    for name, points in configs.items():
        if not points:
            raise InterventionError(f"CMAP configuration {name!r} patches no point")
        parsed[name] = {parse_point(p): heads for p, heads in points.items()}
    needed = list(dict.fromkeys(p for points in parsed.values() for p in points))
    _, donor_activations = run_with_cache(donor, input_ids, attention_mask, needed, last_only=True)
    run = CachedRun(recipient, input_ids, attention_mask)
    names = list(parsed)
    per_pass = max(1, VARIANT_ROWS // input_ids.shape[0])
    out = {}
    for start in range(0, len(names), per_pass):
        chunk = names[start : start + per_pass]
        patch_sets = [
            [Patch(p, donor_activations[p], positions, None if h is None else tuple(h)) for p, h in parsed[name].items()]
            for name in chunk
        ]
        logits = run.patched_variants(patch_sets, spans)  # [batch, variants, vocab]
        out.update({name: logits[:, v] for v, name in enumerate(chunk)})
    return out


@checked
def knockout_sweep(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    windows: Sequence[Iterable[int]],
    sources: PositionsLike,
    targets: PositionsLike = "LT",
    *,
    spans: Sequence[Spans] | None = None,
) -> torch.Tensor:
    """Attention knockout once per window of layers (Geva et al.'s sweep): in every head of the
    window's layers, the ``targets`` positions may not attend to the ``sources`` positions.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        input_ids: ``LongTensor[batch, pos]``, left-padded; or a `Prompts` (its mask and spans
            fill the arguments left unset), or text.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding.
        windows: the windows of layers, one knockout each (``[range(0, 9), range(1, 10), ...]``).
        sources: the positions attended to that are blocked, a selector in prompt coordinates
            (``"FE"``, ``"LT"``, ``"(FE+LT)^C"``, index lists).
        targets: the positions whose attention to ``sources`` is blocked (default ``"LT"``).
        spans: per example, the named spans (``FE``, ``subject``, ...) the position selectors name.

    Returns:
        logits ``[len(windows), batch, vocab]`` at the last position, equal to running the model
        inside `attention_knockout` once per window (to float rounding). The windows run as
        variants of one pass, each continuing the plain run from its first layer and the
        first target column.

    Examples:
        >>> import graftlens, torch
        >>> from graftlens.models import tiny_model, select_layers
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> windows = [[0, 1], [1, 2], [2, 3]]
        >>> logits = graftlens.knockout_sweep(m, ids, None, windows, sources="0,1")
        >>> logits.shape
        torch.Size([3, 1, 96])
    """
    loaded = as_loaded(model)
    check_batch(input_ids, attention_mask, spans)
    n = loaded.adapter.n_layers
    windows = [list(w) for w in windows]
    for w in windows:
        bad = [layer for layer in w if not 0 <= int(layer) < n]
        if bad:
            raise InterventionError(f"knockout window {w} names layers {bad} outside 0..{n - 1}")
    run = CachedRun(loaded, input_ids, attention_mask)
    return run.knocked_out_windows(windows, sources, targets, spans=spans)
