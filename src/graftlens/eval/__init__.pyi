"""Batching prompts and scoring next-token predictions. (type stub)."""

# Generated from the package's lazy_exports declaration by `make stubs`; do not edit.

from graftlens.eval.batching import (
    batches as batches,
    collate as collate,
    ForcedTargets as ForcedTargets,
    pad_id_of as pad_id_of,
    prompt_batch as prompt_batch,
    Prompts as Prompts,
    with_targets as with_targets,
)
from graftlens.eval.scoring import (
    evaluate as evaluate,
    plain_last_logits as plain_last_logits,
    PromptScore as PromptScore,
    score_logits as score_logits,
    summarize as summarize,
    target_logprob as target_logprob,
)
from graftlens.eval.text import (
    prompts as prompts,
)

__all__ = [
    "batches",
    "collate",
    "evaluate",
    "ForcedTargets",
    "pad_id_of",
    "plain_last_logits",
    "prompt_batch",
    "Prompts",
    "prompts",
    "PromptScore",
    "score_logits",
    "summarize",
    "target_logprob",
    "with_targets",
]
