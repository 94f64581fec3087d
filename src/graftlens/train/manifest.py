"""The evaluation table a finetuning manifest records."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from graftlens.data.prompts import TokenizedPrompt
from graftlens.eval.scoring import PromptScore, summarize


def evaluation_table(scores: Sequence[PromptScore], prompts: Sequence[TokenizedPrompt]) -> dict:
    """``{"overall": {...}, "by_template_direction": {"test_qa/forward": {...}, ...}}`` of top-k metrics."""
    groups: dict[str, list[PromptScore]] = defaultdict(list)
    by_direction: dict[str, list[PromptScore]] = defaultdict(list)
    for s, p in zip(scores, prompts):
        groups[f"{p.meta.get('template')}/{p.meta.get('direction')}"].append(s)
        by_direction[str(p.meta.get("direction"))].append(s)
    return {
        "overall": _rounded(summarize(scores)),
        "by_direction": {k: _rounded(summarize(v)) for k, v in sorted(by_direction.items())},
        "by_template_direction": {k: _rounded(summarize(v)) for k, v in sorted(groups.items())},
    }


def _rounded(d: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}
