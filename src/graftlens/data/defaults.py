"""The default new-fact dataset of the demo, made once and kept in the cache."""

from __future__ import annotations

from pathlib import Path

from graftlens.cache import cache_dir
from graftlens.data.dataset import FactDataset, build_dataset, load_dataset

#: What `graftlens demo` and a bare `graftlens finetune` train on (see the README for why).
DEMO_KIND = "fake_actors"
DEMO_FACTS = 12
DEMO_SEED = 0


def demo_dataset() -> tuple[FactDataset, Path]:
    """The demo's dataset and its directory (written on first use; same bytes every time)."""
    return cached_dataset(DEMO_KIND, DEMO_FACTS, DEMO_SEED)


def cached_dataset(kind: str, n_facts: int, seed: int) -> tuple[FactDataset, Path]:
    """The generated dataset ``(kind, n_facts, seed)`` and its directory in the cache."""
    data = build_dataset(kind, n_facts, seed)
    directory = cache_dir() / "datasets" / f"{kind}-{n_facts}-{seed}-{data.content_hash}"
    if not (directory / "dataset.json").is_file():
        data.save(directory)
    return load_dataset(directory), directory
