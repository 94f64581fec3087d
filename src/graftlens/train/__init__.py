"""Finetuning base models on new facts: cached by content hash, resumable, with a manifest."""

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "graftlens.train.config": ["FinetuneConfig", "LoraSettings"],
        "graftlens.train.finetuning": ["finetune", "FinetuneError", "FinetuneResult"],
    },
)
