"""Manifest helpers: evaluation tables, package versions, atomic JSON writes."""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from graftlens.data.prompts import TokenizedPrompt
from graftlens.eval.scoring import PromptScore, summarize
from graftlens.fileio import write_text_atomic


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


def run_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("graftlens", "torch", "transformers", "peft", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
