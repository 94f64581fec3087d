"""Cancel sublayer updates (Geva et al.'s test of what builds the subject representation).

A transformer layer adds two updates to the residual stream: its attention sublayer's output
and its MLP sublayer's output. *Cancelling* a sublayer at some positions sets its output there
to zero (``attn_out``/``mlp_out``, the output projection's output), so the residual stream at
those positions goes on without that layer's update; *mean ablation* puts the output's mean
over a reference set of prompts there instead.

Geva et al. cancel the MLP (or attention) updates of a window of consecutive layers at every
position up to and including the subject's last token, and read the attribute rate of the
last-subject representation at a later layer: early MLPs enrich the subject, attention does not.

In families with a norm after each sublayer (Gemma-2, OLMo-2) the norm of a zero output is zero,
so cancelling there also cancels the update. A mean ablation writes the mean before that norm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from graftlens.errors import InterventionError, LayerSelectionError
from graftlens.interventions.hooks import capture, edit
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.run import call_sequence, run_logits
from graftlens.positions import PositionsLike, Spans, resolve_positions

Sublayer = Literal["mlp", "attn"]
SUBLAYERS: tuple[str, ...] = ("mlp", "attn")
_POINT = {"mlp": "mlp_out", "attn": "attn_out"}


class SublayerError(InterventionError):
    """A sublayer cancellation names an unknown sublayer, a window that does not fit, or lacks its means."""


def sublayer_point(sublayer: str, layer: int) -> str:
    """The hook point holding ``sublayer``'s update of ``layer`` (``"mlp_out.3"``)."""
    try:
        return f"{_POINT[sublayer]}.{layer}"
    except KeyError:
        raise SublayerError(f"unknown sublayer {sublayer!r}; choose from: {', '.join(SUBLAYERS)}") from None


def through_last(mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``BoolTensor[batch, pos]``: every real position up to and including the last one ``mask`` picks.

    A row where ``mask`` picks nothing picks nothing."""
    picked_at_or_after = mask.flip(-1).cumsum(-1).flip(-1) > 0  # some picked position at p or later
    return picked_at_or_after & attention_mask.bool()


def window_layers(start: int, window: int, n_layers: int) -> list[int]:
    """The ``window`` consecutive layers from ``start`` (cut at the model's last layer)."""
    if window < 1 or window > n_layers:
        raise SublayerError(f"a window of {window} layers does not fit a model of {n_layers} layers (1..{n_layers})")
    if not 0 <= start < n_layers:
        raise LayerSelectionError(f"window start {start} out of range (the model has layers 0..{n_layers - 1})")
    return list(range(start, min(n_layers, start + window)))


def _check_layers(loaded: LoadedModel, layers: Iterable[int]) -> list[int]:
    layers = sorted({int(layer) for layer in layers})
    n = loaded.adapter.n_layers
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise LayerSelectionError(f"sublayer layers {bad} out of range (the model has layers 0..{n - 1})")
    return layers


@checked
@contextmanager
def cancel_sublayers(
    model: LoadedModel | nn.Module,
    sublayer: str,
    layers: Iterable[int],
    positions: PositionsLike = "all",
    *,
    through: bool = False,
    spans: Sequence[Spans] | None = None,
    means: Mapping[int, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Within the block, ``sublayer`` (``"mlp"`` or ``"attn"``) of each of ``layers`` adds nothing
    at ``positions`` (a selector in prompt coordinates, resolved on each forward call); with
    ``through``, at every position up to and including the last one the selector picks.

    With ``means`` (layer → ``Tensor[d_model]``, e.g. from `sublayer_means`) the output
    there is that mean instead of zero (mean ablation).

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        sublayer: ``"mlp"`` or ``"attn"``.
        layers: the layers whose sublayer is cancelled.
        positions: where the sublayer adds nothing, a selector in prompt coordinates (``"FE"``,
            ``"LT"``, ``"(FE+LT)^C"``, index lists).
        through: cancel at every position up to and including the last one ``positions`` picks.
        spans: per example, the named spans (``FE``, ``subject``, ...) the position selectors name.
        means: layer → ``Tensor[d_model]`` written instead of zero (mean ablation;
            `sublayer_means`).

    Examples:
        Geva et al.'s enrichment test: early MLPs cancelled up to the subject's last token:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids, spans = torch.tensor([[5, 6, 7, 8, 9]]), [{"subject": (1, 3)}]
        >>> cancel = graftlens.cancel_sublayers
        >>> with cancel(m, "mlp", [0, 1], "subject", through=True, spans=spans):
        ...     cancelled = graftlens.run_logits(m, ids, last_only=True)
        >>> cancelled.shape
        torch.Size([1, 1, 96])
    """
    loaded = as_loaded(model)
    layers = _check_layers(loaded, layers)
    points = {layer: sublayer_point(sublayer, layer) for layer in layers}
    if means is not None:
        missing = [layer for layer in layers if layer not in means]
        if missing:
            raise SublayerError(f"mean ablation of {sublayer} has no means for layers {missing}")
    where: dict[str, torch.Tensor] = {}  # "mask": BoolTensor[batch, pos] of the current forward call

    def resolve(module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask, cached, new = call_sequence(args, kwargs, "sublayer cancellation")
        if cached:
            raise SublayerError("sublayer cancellation runs on whole prompts, not on a continuation of a KV cache")
        picked = resolve_positions(positions, mask, spans)
        where["mask"] = through_last(picked, mask) if through else picked

    def cancel(layer: int):
        def fn(out: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model]
            mask = where["mask"].to(out.device)[..., None]  # [batch, pos, 1]
            value = torch.zeros((), dtype=out.dtype, device=out.device) if means is None else means[layer].to(out)
            return torch.where(mask, value, out)

        return fn

    hook = loaded.model.register_forward_pre_hook(resolve, with_kwargs=True)
    try:
        with edit(loaded, {points[layer]: cancel(layer) for layer in layers}):
            yield
    finally:
        hook.remove()


@checked
def sublayer_means(
    model: LoadedModel | nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, Sequence[Spans] | None]],
    sublayer: str,
    layers: Iterable[int],
    positions: PositionsLike = "all",
    *,
    through: bool = False,
) -> dict[int, torch.Tensor]:
    """Mean of ``sublayer``'s output of each of ``layers`` over the positions a cancellation with
    the same ``positions``/``through`` would touch, over every ``(input_ids, attention_mask,
    spans)`` batch: layer → ``Tensor[d_model]`` (float32).

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        batches: ``(input_ids, attention_mask, spans)`` triples to average over.
        sublayer: ``"mlp"`` or ``"attn"``.
        layers: the layers whose output is averaged.
        positions: the positions averaged over, as `cancel_sublayers` takes them.
        through: average over every position up to the last one ``positions`` picks.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids, spans = torch.tensor([[5, 6, 7, 8, 9]]), [{"subject": (1, 3)}]
        >>> batches = [(ids, None, spans)]
        >>> means = graftlens.sublayer_means(
        ...     m, batches, "mlp", range(4), "subject", through=True
        ... )
        >>> sorted(means), means[0].shape
        ([0, 1, 2, 3], torch.Size([32]))
    """
    loaded = as_loaded(model)
    layers = _check_layers(loaded, layers)
    points = [sublayer_point(sublayer, layer) for layer in layers]
    sums = {layer: torch.zeros(loaded.adapter.d_model, dtype=torch.float64) for layer in layers}
    count = 0
    for input_ids, attention_mask, spans in batches:
        if attention_mask is None:  # no padding
            attention_mask = torch.ones_like(input_ids)
        picked = resolve_positions(positions, attention_mask, spans)
        mask = (through_last(picked, attention_mask) if through else picked).to(input_ids.device)  # [batch, pos]
        with capture(loaded, points) as cache:
            run_logits(loaded, input_ids, attention_mask, last_only=True)
        for layer, point in zip(layers, points):
            sums[layer] += cache[point][mask].double().sum(0).cpu()
        count += int(mask.sum())
    if count == 0:
        raise SublayerError(f"no position to take the mean of {sublayer} over: the selector picks nothing in these prompts")
    return {layer: (s / count).float() for layer, s in sums.items()}
