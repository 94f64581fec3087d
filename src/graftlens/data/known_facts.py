"""Well-known facts (capitals, landmarks, languages, founders, ...) with their subject spans.

The shipped ``files/known_facts.jsonl`` is written by the graftlens authors as data; a user
file with the same keys (``id, relation, subject, prompt, target``) works the same way.
The companion methods (attention knockout, vocabulary projection) run on the facts a model
gets right, so not every fact needs to be known by every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from graftlens.data.dataset import DatasetError, jsonl_records
from graftlens.data.prompts import TokenizedPrompt, tokenize_prompt
from graftlens.fileio import read_utf8

_KEYS = ("id", "relation", "subject", "prompt", "target")


@dataclass(frozen=True)
class KnownFact:
    id: str
    relation: str
    subject: str
    prompt: str
    target: str  # the continuation, with its leading space (" Paris")

    @property
    def subject_chars(self) -> tuple[int, int]:
        start = self.prompt.index(self.subject)
        return start, start + len(self.subject)


def load_known_facts(path: str | Path | None = None) -> list[KnownFact]:
    """The shipped known facts, or those of a JSONL file; each line checked, errors name it."""
    if path is None:
        text = resources.files("graftlens.data").joinpath("files/known_facts.jsonl").read_text(encoding="utf-8")
        source = "known_facts.jsonl (shipped)"
    else:
        p = Path(path)
        if not p.is_file():
            raise DatasetError(f"known-facts file {p} does not exist")
        text, source = read_utf8(p), str(p)
    facts: list[KnownFact] = []
    seen: set[str] = set()
    for n, rec in jsonl_records(text, source):
        if not isinstance(rec, dict) or sorted(rec) != sorted(_KEYS):
            raise DatasetError(f"{source}:{n}: expected the keys {', '.join(_KEYS)}")
        fact = KnownFact(**{k: str(rec[k]) for k in _KEYS})
        if fact.id in seen:
            raise DatasetError(f"{source}:{n}: duplicate id {fact.id!r}")
        if fact.subject not in fact.prompt:
            raise DatasetError(f"{source}:{n}: subject {fact.subject!r} of {fact.id!r} is not in its prompt {fact.prompt!r}")
        if not fact.target.strip():
            raise DatasetError(f"{source}:{n}: fact {fact.id!r} has an empty target")
        seen.add(fact.id)
        facts.append(fact)
    if not facts:
        raise DatasetError(f"{source}: no known facts in the file")
    return facts


def tokenize_known_facts(facts: list[KnownFact], tokenizer) -> list[TokenizedPrompt]:
    """Prompts with ``subject`` (also ``FE``) and ``LT`` spans."""
    return [
        tokenize_prompt(
            tokenizer,
            f.id,
            f.prompt,
            f.target,
            {"subject": f.subject_chars, "FE": f.subject_chars},
            {"relation": f.relation, "subject": f.subject},
        )
        for f in facts
    ]
