"""Batching prompts and scoring next-token predictions."""

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "graftlens.eval.batching": [
            "batches",
            "collate",
            "ForcedTargets",
            "pad_id_of",
            "prompt_batch",
            "Prompts",
            "with_targets",
        ],
        "graftlens.eval.text": ["prompts"],
        "graftlens.eval.scoring": ["evaluate", "plain_last_logits", "PromptScore", "score_logits", "summarize", "target_logprob"],
    },
)
