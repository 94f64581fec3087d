"""Batching prompts and scoring next-token predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "ForcedTargets": "graftlens.eval.batching",
        "PromptBatch": "graftlens.eval.batching",
        "batches": "graftlens.eval.batching",
        "collate": "graftlens.eval.batching",
        "pad_id_of": "graftlens.eval.batching",
        "PromptScore": "graftlens.eval.scoring",
        "evaluate": "graftlens.eval.scoring",
        "plain_last_logits": "graftlens.eval.scoring",
        "score_logits": "graftlens.eval.scoring",
        "summarize": "graftlens.eval.scoring",
        "target_logprob": "graftlens.eval.scoring",
        "with_targets": "graftlens.eval.batching",
    },
)

if TYPE_CHECKING:
    from graftlens.eval.batching import ForcedTargets, PromptBatch, batches, collate, pad_id_of, with_targets
    from graftlens.eval.scoring import PromptScore, evaluate, plain_last_logits, score_logits, summarize, target_logprob

__all__ = [
    "ForcedTargets",
    "PromptBatch",
    "PromptScore",
    "batches",
    "collate",
    "evaluate",
    "pad_id_of",
    "plain_last_logits",
    "score_logits",
    "summarize",
    "target_logprob",
    "with_targets",
]
