"""A new-fact dataset on disk: facts, training texts and held-out test prompts.

Layout of a dataset directory (all UTF-8 JSON, keys sorted, so one seed gives byte-identical
files)::

    dataset.json   what made it (kind, seed, counts, templates) and its content hash
    facts.jsonl    one MovieFact per line
    train.jsonl    {"text", "fact_id", "direction", "template", "split"}
    test.jsonl     {"id", "fact_id", "direction", "template", "split", "prompt", "target",
                    "char_spans": {"FE": [start, stop], "title": [...], "relation": [...]}}

Test prompts hold *character* spans; `graftlens.data.prompts.tokenize_examples` turns
them into token spans for whichever tokenizer is in use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from graftlens.data.facts import DIRECTIONS, MovieFact, generate_facts
from graftlens.data.prompts import TokenizedPrompt, tokenize_prompt
from graftlens.data.templates import DEFAULT_TEMPLATES, TARGET_SLOT, Template, check_template_sets
from graftlens.errors import DataError
from graftlens.fileio import read_utf8, write_text_atomic


class DatasetError(DataError):
    """A dataset directory or file is missing, empty or malformed."""


FORMAT_VERSION = 1


@dataclass(frozen=True)
class TestExample:
    """A held-out prompt; ``target`` is the continuation (``" " + second actor``)."""

    id: str
    fact_id: str
    direction: str
    template: str
    split: str
    prompt: str
    target: str
    char_spans: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainText:
    text: str
    fact_id: str
    direction: str
    template: str
    split: str


@dataclass(frozen=True)
class FactDataset:
    """Facts with their training texts and test prompts (in memory)."""

    meta: dict
    facts: tuple[MovieFact, ...]
    train: tuple[TrainText, ...]
    test: tuple[TestExample, ...]

    @property
    def content_hash(self) -> str:
        return self.meta["content_hash"]

    def train_texts(self, split: str | None = None) -> list[str]:
        """Training texts of one split (``"A"``, ``"B"``) or of all facts (``None``/``"all"``)."""
        return [t.text for t in self.train if split in (None, "all") or t.split == split]

    def test_examples(
        self, split: str | None = None, template: str | None = None, direction: str | None = None
    ) -> list[TestExample]:
        return [
            e
            for e in self.test
            if (split in (None, "all") or e.split == split)
            and (template is None or e.template == template)
            and (direction is None or e.direction == direction)
        ]

    def save(self, directory: str | Path) -> Path:
        """Write the dataset files (atomically, file by file) and return the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / "facts.jsonl", _jsonl(asdict(f) for f in self.facts))
        write_text_atomic(directory / "train.jsonl", _jsonl(asdict(t) for t in self.train))
        write_text_atomic(directory / "test.jsonl", _jsonl(_test_record(e) for e in self.test))
        write_text_atomic(directory / "dataset.json", json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        return directory


def build_dataset(
    kind: str = "fake_actors",
    n_facts: int = 16,
    seed: int = 0,
    templates: Sequence[Template] = DEFAULT_TEMPLATES,
) -> FactDataset:
    """Generate facts and render every training template and test template in both directions."""
    check_template_sets(templates)
    facts = generate_facts(kind, n_facts, seed)
    train: list[TrainText] = []
    test: list[TestExample] = []
    for fact in facts:
        for direction in DIRECTIONS:
            values = fact.slot_values(direction)
            for t in templates:
                if t.kind == "test":
                    spans = t.char_spans(values)
                    test.append(
                        TestExample(
                            id=f"{fact.id}-{direction}-{t.name}",
                            fact_id=fact.id,
                            direction=direction,
                            template=t.name,
                            split=fact.split,
                            prompt=t.render(values),
                            target=" " + values[TARGET_SLOT],
                            char_spans=spans,
                        )
                    )
                else:
                    train.append(TrainText(t.render(values), fact.id, direction, t.name, fact.split))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "n_facts": n_facts,
        "seed": seed,
        "templates": [asdict(t) for t in templates],
        "counts": {"facts": len(facts), "train": len(train), "test": len(test)},
    }
    meta["content_hash"] = _content_hash(facts, train, test)
    return FactDataset(meta, tuple(facts), tuple(train), tuple(test))


def load_dataset(directory: str | Path) -> FactDataset:
    """Read a dataset directory written by `FactDataset.save` (or ``graftlens data make``)."""
    directory = Path(directory)
    meta_path = directory / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(
            f"{directory} is not a graftlens dataset: {meta_path.name} is missing (make one with `graftlens data make`)"
        )
    try:
        meta = json.loads(read_utf8(meta_path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{meta_path}: not valid JSON ({exc})") from None
    facts = tuple(MovieFact(**r) for r in _read_jsonl(directory / "facts.jsonl", MovieFact))
    train = tuple(TrainText(**r) for r in _read_jsonl(directory / "train.jsonl", TrainText))
    test = tuple(
        TestExample(**{**r, "char_spans": {k: tuple(v) for k, v in r["char_spans"].items()}})
        for r in _read_jsonl(directory / "test.jsonl", TestExample)
    )
    if not facts or not train or not test:
        empty = [n for n, rows in (("facts.jsonl", facts), ("train.jsonl", train), ("test.jsonl", test)) if not rows]
        raise DatasetError(f"dataset {directory} is empty: {', '.join(empty)} has no rows")
    dataset = FactDataset(meta, facts, train, test)
    actual = _content_hash(facts, train, test)
    if meta.get("content_hash") != actual:
        raise DatasetError(
            f"dataset {directory} was edited after it was made: content hash {actual} != {meta.get('content_hash')}"
        )
    return dataset


def _test_record(e: TestExample) -> dict:
    rec = asdict(e)
    rec["char_spans"] = {k: list(v) for k, v in sorted(e.char_spans.items())}
    return rec


def _jsonl(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)


def jsonl_records(text: str, source: str) -> Iterator[tuple[int, object]]:
    """``(line number, parsed value)`` of each non-blank line of JSONL ``text``; a line that is not
    JSON is a `DatasetError` naming ``source`` and the line."""
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{source}:{n}: not valid JSON ({exc})") from None


def _read_jsonl(path: Path, kind: type) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"dataset file {path} is missing")
    expected = set(kind.__dataclass_fields__)
    rows = []
    ids: set[str] = set()
    for n, rec in jsonl_records(read_utf8(path), str(path)):
        if not isinstance(rec, dict) or set(rec) != expected:
            got = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise DatasetError(f"{path}:{n}: expected the keys {sorted(expected)}, got {got}")
        for key, value in rec.items():
            if key == "char_spans":
                _check_spans(value, f"{path}:{n}")
            elif not isinstance(value, str):
                raise DatasetError(f"{path}:{n}: {key!r} must be a string, got {type(value).__name__} {value!r}")
        if "id" in rec:
            if rec["id"] in ids:
                raise DatasetError(f"{path}: the id {rec['id']!r} appears more than once (ids must be unique)")
            ids.add(rec["id"])
        rows.append(rec)
    return rows


def _check_spans(value: object, where: str) -> None:
    """``char_spans`` is ``{name: [start, stop]}`` with integers ``0 <= start < stop``."""
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: 'char_spans' must map span names to [start, stop], got {type(value).__name__}")
    for name, span in value.items():
        ok = (
            isinstance(span, list | tuple)
            and len(span) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
            and 0 <= span[0] < span[1]
        )
        if not ok:
            raise DatasetError(
                f"{where}: char_spans[{name!r}] must be [start, stop] with integers 0 <= start < stop, got {span!r}"
            )


def _content_hash(facts: Sequence[MovieFact], train: Sequence[TrainText], test: Sequence[TestExample]) -> str:
    h = hashlib.sha256()
    for part in (_jsonl(asdict(f) for f in facts), _jsonl(asdict(t) for t in train), _jsonl(_test_record(e) for e in test)):
        h.update(part.encode("utf-8"))
    return h.hexdigest()[:16]


def tokenize_test(examples: Sequence[TestExample], tokenizer) -> list[TokenizedPrompt]:
    """Token ids, token spans (``FE``, ``title``, ``relation``, ``LT``, ...) and targets of test examples."""
    return [
        tokenize_prompt(
            tokenizer,
            e.id,
            e.prompt,
            e.target,
            e.char_spans,
            {"fact_id": e.fact_id, "direction": e.direction, "template": e.template, "split": e.split},
        )
        for e in examples
    ]
