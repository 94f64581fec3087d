"""Finetuning base models on new facts: cached by content hash, resumable, with a manifest."""

from graftlens.train.config import FinetuneConfig, LoraSettings
from graftlens.train.finetune import FinetuneError, FinetuneResult, finetune

__all__ = ["FinetuneConfig", "FinetuneError", "FinetuneResult", "LoraSettings", "finetune"]
