"""Metrics: what a patching or attribution method measures at the last position.

A metric is a function of the last-position logits ``[batch, vocab]`` and the targets
``LongTensor[batch]`` giving one value per prompt ``[batch]``; methods average it over prompts.
``activation_patching``, ``attribution_patching``, ``path_patching`` and ``edge_attribution``
take one as ``metric=``. The ready ones:

- `prob`: the target's probability (patching's and path patching's default);
- `logprob`: its log-probability (edge attribution's default);
- `logit_diff` ``(foil_ids)``: the target's logit minus a foil's (the IOI-style metric);
- `rank`: the target's rank, 1 = the top prediction (not differentiable: no attribution).

Examples:
    >>> import torch
    >>> from graftlens.interventions import metrics
    >>> logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    >>> metrics.rank(logits, torch.tensor([1, 2])).tolist()
    [2.0, 1.0]
    >>> metrics.logit_diff(torch.tensor([0, 0]))(logits, torch.tensor([1, 2])).tolist()
    [-1.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from graftlens.errors import InterventionError

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits [batch, vocab], target_ids [batch]) -> [batch]


def _wide(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least, float64 kept


def _at(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return values.gather(1, ids.to(values.device).long()[:, None])[:, 0]


def prob(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """``[batch]``: the target's probability."""
    return _at(_wide(logits).softmax(-1), target_ids)


def logprob(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """``[batch]``: the target's log-probability."""
    return _at(_wide(logits).log_softmax(-1), target_ids)


def rank(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """``[batch]``: the target's rank among the vocabulary, 1 = the top prediction (float)."""
    target = _at(logits, target_ids)
    return (logits > target[:, None]).sum(-1).to(torch.float32) + 1


def logit_diff(foil_ids: torch.Tensor | int) -> Metric:
    """The metric ``logit[target] − logit[foil]``: ``foil_ids`` one token per prompt, or one for all."""

    def metric(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        foils = foil_ids if isinstance(foil_ids, torch.Tensor) else torch.full_like(target_ids, int(foil_ids))
        if foils.shape != target_ids.shape:
            raise InterventionError(f"logit_diff: foil_ids has shape {list(foils.shape)}, the targets {list(target_ids.shape)}")
        wide = _wide(logits)
        return _at(wide, target_ids) - _at(wide, foils)

    metric.__name__ = "logit_diff"
    return metric


def per_prompt(metric: Metric, logits: torch.Tensor, target_ids: torch.Tensor, who: str) -> torch.Tensor:
    """``metric`` of last-position ``logits`` ``[batch, vocab]`` (a ``[batch, 1, vocab]`` slice too),
    checked to give one finite-shaped value per prompt."""
    if logits.dim() == 3:
        logits = logits[:, -1]
    if target_ids is None:
        raise InterventionError(f"{who}: the metric needs target_ids (give targets= to graftlens.prompts)")
    values = metric(logits, target_ids.to(logits.device))
    if not isinstance(values, torch.Tensor) or values.shape != target_ids.shape:
        shape = list(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise InterventionError(f"{who}: metric must give one value per prompt, [{target_ids.shape[0]}], got {shape}")
    return values


def check_metric(who: str, metric: object) -> None:
    if not callable(metric):
        raise InterventionError(f"{who}: metric must be a function of (logits, target_ids), such as graftlens.metrics.prob")
