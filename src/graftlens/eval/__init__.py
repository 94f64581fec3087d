"""Evaluation: batching prompts and scoring next-token predictions."""

from graftlens.eval.batching import PromptBatch, batches, collate, pad_id_of
from graftlens.eval.scoring import PromptScore, evaluate, plain_last_logits, score_logits, summarize

__all__ = [
    "PromptBatch",
    "PromptScore",
    "batches",
    "collate",
    "evaluate",
    "pad_id_of",
    "plain_last_logits",
    "score_logits",
    "summarize",
]
