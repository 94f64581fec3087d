"""Finetuning base models on new facts: cached by content hash, resumable, with a manifest."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "FinetuneConfig": "graftlens.train.config",
        "LoraSettings": "graftlens.train.config",
        "FinetuneError": "graftlens.train.finetune",
        "FinetuneResult": "graftlens.train.finetune",
        "finetune": "graftlens.train.finetune",
    },
)

if TYPE_CHECKING:
    from graftlens.train.config import FinetuneConfig, LoraSettings
    from graftlens.train.finetune import FinetuneError, FinetuneResult, finetune

__all__ = [
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "LoraSettings",
    "finetune",
]
