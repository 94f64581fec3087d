"""Donor activations kept per run: CMAP sweeps patch many head sets from one donor run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftlens.bounded import BoundedStore

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.interventions.hooks import ActivationCache
    from graftlens.interventions.points import Point
    from graftlens.models import LoadedModel


class DonorActivations:
    """Donor activations per (donor, batch, point), reused across the configurations of a sweep.

    CMAP sweeps patch many head sets from one donor run; the runner scores every configuration of
    a batch in turn, so each batch's donor activations are kept (up to ``max_bytes``, least
    recently used dropped first) instead of being recomputed for every configuration."""

    def __init__(self, max_bytes: int = 2 << 30):
        self._store: BoundedStore[torch.Tensor] = BoundedStore(max_bytes)

    def get(self, name: str, donor: LoadedModel, batch: Prompts, points: list[Point]) -> ActivationCache:
        from graftlens.interventions.hooks import ActivationCache
        from graftlens.interventions.patching import run_with_cache

        key = tuple(p.id for p in batch.prompts)
        missing = [p for p in points if (name, key, p) not in self._store]
        if missing:
            _, cache = run_with_cache(donor, batch.input_ids, batch.attention_mask, missing, last_only=True)
            for p in missing:
                self._store.put((name, key, p), cache[p], cache[p].numel() * cache[p].element_size())
        out = ActivationCache()
        for p in points:
            out[p] = self._store.get((name, key, p))
        return out
