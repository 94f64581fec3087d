"""Your own prompts from a file: JSONL or CSV with a ``text`` (spans marked ``[NAME:words]``) and a
``target`` per line, optionally an ``id`` and a ``template`` (how the report groups rows).

JSONL, one object a line::

    {"text": "[FE:Lori Barker] stars in a movie alongside", "target": " Gregory Hall"}

CSV, with a header::

    text,target,template
    "[FE:Lori Barker] stars in a movie alongside", Gregory Hall,alongside

A CSV cell loses its leading space to most editors, so a CSV target is read with one space
before it unless it starts with one already (``"Gregory Hall"`` is scored as ``" Gregory Hall"``).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftlens.data.prompts import TokenizedPrompt, tokenize_prompt
from graftlens.data.spans import SpanError, unmark
from graftlens.errors import DataError
from graftlens.fileio import read_utf8


@dataclass(frozen=True)
class FilePrompt:
    """One line of a prompt file: the text without its marks, its spans (characters), its target."""

    id: str
    text: str
    target: str
    spans: dict[str, tuple[int, int]]
    template: str


def load_prompt_file(path: str | Path) -> list[FilePrompt]:
    """The prompts of a ``.jsonl`` or ``.csv`` file; a bad line is one `DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist")
    if path.suffix not in (".jsonl", ".csv"):
        raise DataError(f"prompt file {path}: give a .jsonl or a .csv file")
    records = _csv_records(path) if path.suffix == ".csv" else _jsonl_records(path)
    out, seen = [], set()
    for line, record in records:
        where = f"prompt file {path}, line {line}"
        text, target = record.get("text"), record.get("target")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: no text")
        if not isinstance(target, str) or not target.strip():
            raise DataError(f"{where}: no target (the continuation whose first token is scored)")
        if path.suffix == ".csv" and not target.startswith(" "):
            target = " " + target
        try:
            plain, spans = unmark(text)
        except SpanError as exc:
            raise DataError(f"{where}: {exc}") from None
        pid = str(record.get("id") or f"{path.stem}-{line}")
        if pid in seen:
            raise DataError(f"{where}: id {pid!r} is used twice")
        seen.add(pid)
        out.append(FilePrompt(pid, plain, target, spans, str(record.get("template") or path.stem)))
    if not out:
        raise DataError(f"prompt file {path} holds no prompt")
    return out


def prompt_file_hash(prompts: list[FilePrompt]) -> str:
    """Content hash of the prompts (what a run records as its data)."""
    blob = json.dumps([p.__dict__ for p in prompts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenize_prompt_file(prompts: list[FilePrompt], tokenizer: Any) -> list[TokenizedPrompt]:
    """Prompts with their marked spans and ``LT``."""
    return [tokenize_prompt(tokenizer, p.id, p.text, p.target, p.spans, {"template": p.template}) for p in prompts]


def _jsonl_records(path: Path) -> list[tuple[int, dict]]:
    records = []
    for line, raw in enumerate(read_utf8(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"prompt file {path}, line {line}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"prompt file {path}, line {line}: an object with text and target, not {type(record).__name__}")
        records.append((line, record))
    return records


def _csv_records(path: Path) -> list[tuple[int, dict]]:
    rows = list(csv.DictReader(read_utf8(path).splitlines()))
    if rows and not {"text", "target"} <= set(rows[0]):
        raise DataError(f"prompt file {path}: the header needs the columns text and target, it has {sorted(rows[0])}")
    return [(i + 2, row) for i, row in enumerate(rows)]
