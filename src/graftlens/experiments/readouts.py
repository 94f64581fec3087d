"""Last-position logits of one configuration on one batch, for every kind of configuration.

Grafting configurations use the batched engine; activation-level ones (knockout, lens, CMAP)
use :mod:`graftlens.interventions`. Each returns a function ``batch → logits[batch, vocab]``
that the runner scores the same way, so every method lands in the same store and report.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from graftlens.eval.batching import PromptBatch
from graftlens.eval.scoring import LastLogits, grafted_last_logits, plain_last_logits
from graftlens.experiments.method_specs import CmapSpec, KnockoutSpec, LensSpec
from graftlens.experiments.recipe import RunConfig
from graftlens.graft.positions import resolve_positions
from graftlens.interventions.hooks import ActivationCache
from graftlens.interventions.knockout import attention_knockout, knockout_edges
from graftlens.interventions.lens import point_logits
from graftlens.interventions.patching import check_same_shapes, cross_model_patched_logits, run_logits, run_with_cache
from graftlens.interventions.points import Point
from graftlens.models import LoadedModel
from graftlens.models.names import select_layers


class DonorActivations:
    """Donor activations per (donor, batch, point), reused across the configurations of a sweep.

    CMAP sweeps patch many head sets from one donor run; the runner scores configuration after
    configuration, so each batch's donor activations are kept (up to ``max_bytes``, oldest
    dropped first) instead of being recomputed for every configuration."""

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._store: OrderedDict[tuple[str, tuple[str, ...], Point], torch.Tensor] = OrderedDict()
        self._bytes = 0

    def get(self, name: str, donor: LoadedModel, batch: PromptBatch, points: list[Point]) -> ActivationCache:
        key = tuple(p.id for p in batch.prompts)
        missing = [p for p in points if (name, key, p) not in self._store]
        if missing:
            _, cache = run_with_cache(donor, batch.input_ids, batch.attention_mask, missing, last_only=True)
            for p in missing:
                self._put((name, key, p), cache[p])
        out = ActivationCache()
        for p in points:
            self._store.move_to_end((name, key, p))
            out[p] = self._store[(name, key, p)]
        return out

    def _put(self, key: tuple[str, tuple[str, ...], Point], value: torch.Tensor) -> None:
        self._store[key] = value
        self._bytes += value.numel() * value.element_size()
        while self._bytes > self.max_bytes and len(self._store) > 1:
            _, old = self._store.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()


def last_logits(config: RunConfig, models: dict[str, LoadedModel], donor_cache: DonorActivations) -> LastLogits:
    """The function scoring ``config``: ``batch → logits[batch, vocab]`` at the last position."""
    model = models[config.model]
    method = config.method
    if isinstance(method, KnockoutSpec):
        return _knockout(model, method)
    if isinstance(method, LensSpec):
        return _lens(model, method)
    if isinstance(method, CmapSpec):
        return _cmap(model, models[method.donor], method, donor_cache)
    if not config.grafts:
        return plain_last_logits(model.model)
    donors = {g.donor: models[g.donor] for g in config.grafts}
    return grafted_last_logits(model, donors, config.rules())


def _knockout(model: LoadedModel, spec: KnockoutSpec) -> LastLogits:
    def run(batch: PromptBatch) -> torch.Tensor:
        sources = resolve_positions(spec.sources, batch.attention_mask, batch.spans)  # [batch, pos]
        targets = resolve_positions(spec.targets, batch.attention_mask, batch.spans)
        with attention_knockout(model, knockout_edges(sources, targets), spec.layers):
            return run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)[:, -1]

    return run


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """``LongTensor[batch]``: the last True position of each row of ``mask[batch, pos]``."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, pos, -1).max(-1).values


def _lens(model: LoadedModel, spec: LensSpec) -> LastLogits:
    point = f"{spec.point}.{spec.layer}"

    def run(batch: PromptBatch) -> torch.Tensor:
        where = resolve_positions(spec.position, batch.attention_mask, batch.spans)  # [batch, pos]
        return point_logits(model, batch.input_ids, batch.attention_mask, [point], last_index(where), spec.final_norm)[point]

    return run


def _cmap(base: LoadedModel, donor: LoadedModel, spec: CmapSpec, donor_cache: DonorActivations) -> LastLogits:
    check_same_shapes(base, donor)
    layers = select_layers(spec.layers, base.adapter.n_layers)
    points = [Point(name, layer) for name in spec.points for layer in layers]
    heads = {p: spec.heads for p in points}

    def run(batch: PromptBatch) -> torch.Tensor:
        cache = donor_cache.get(spec.donor, donor, batch, points)
        where = resolve_positions(spec.positions, batch.attention_mask, batch.spans)
        return cross_model_patched_logits(base, cache, batch.input_ids, batch.attention_mask, heads, where)[:, -1]

    return run
