"""Finetuning base models on new facts: cached by content hash, resumable, with a manifest. (type stub)."""

# Generated from the package's lazy_exports declaration by `make stubs`; do not edit.

from graftlens.train.config import (
    FinetuneConfig as FinetuneConfig,
    LoraSettings as LoraSettings,
)
from graftlens.train.finetuning import (
    finetune as finetune,
    FinetuneError as FinetuneError,
    FinetuneResult as FinetuneResult,
)

__all__ = [
    "finetune",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "LoraSettings",
]
