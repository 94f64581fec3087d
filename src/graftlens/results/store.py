"""The results store of a run: one SQLite file, one row per (run, configuration, example).

Rows are written one batch at a time, each batch in one transaction, so a process killed at
any moment leaves only whole batches behind; the primary key makes a duplicate row an error
rather than a silent double count. ``meta`` holds the recipe and the manifest, ``configs`` the
expanded configurations in order.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from graftlens.errors import StoreError

STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configs (
    run TEXT NOT NULL, name TEXT NOT NULL, position INTEGER NOT NULL, grp TEXT NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (run, name)
);
CREATE TABLE IF NOT EXISTS results (
    run TEXT NOT NULL,
    config TEXT NOT NULL,
    example TEXT NOT NULL,
    template TEXT NOT NULL,
    direction TEXT NOT NULL,
    prompt TEXT NOT NULL,
    target TEXT NOT NULL,
    target_prob REAL NOT NULL,
    target_rank INTEGER NOT NULL,
    top_tokens TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    target_logprob REAL,
    continuation TEXT,
    PRIMARY KEY (run, config, example)
);
"""
# Stores written before a column existed get it on open (older rows read as no extras, and as
# not measured: NULL, for the target's log-probability and the greedy continuation).
_MIGRATIONS = {
    "extra": "ALTER TABLE results ADD COLUMN extra TEXT NOT NULL DEFAULT '{}'",
    "target_logprob": "ALTER TABLE results ADD COLUMN target_logprob REAL",
    "continuation": "ALTER TABLE results ADD COLUMN continuation TEXT",
}
_COLUMNS = (
    "config",
    "example",
    "template",
    "direction",
    "prompt",
    "target",
    "target_prob",
    "target_rank",
    "top_tokens",
    "extra",
    "target_logprob",
    "continuation",
)


class DamagedStoreError(StoreError):
    """``results.sqlite`` is not a readable SQLite database (overwritten, truncated, ...)."""


class StoreFullError(StoreError):
    """The disk filled while results were written (the batch being written is not kept)."""


def move_aside(path: Path) -> Path:
    """Rename a damaged store (and its WAL files) to ``NAME.damaged-YYYYmmdd-HHMMSS``; returns the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return target


@dataclass(frozen=True)
class ResultRow:
    config: str
    example: str
    template: str
    direction: str
    prompt: str
    target: str
    target_prob: float
    target_rank: int  # 1 = the top prediction
    top_tokens: tuple[str, ...]  # the model's top predictions, decoded, best first
    extra: Mapping[str, float] = field(default_factory=dict)  # further per-example measures (attribute_rate)
    # The whole target's log-probability, teacher-forced (None: not measured by this method).
    target_logprob: float | None = None
    continuation: str | None = None  # the greedy continuation, decoded (None: not generated)

    def hit(self, k: int) -> bool:
        return self.target_rank <= k


def _problems_summary(problems: list[str]) -> str:
    """One line for sqlite's ``quick_check`` report (which may run to hundreds of lines)."""
    lines = [line.strip() for problem in problems for line in str(problem).splitlines()]
    lines = [line for line in lines if line and not line.startswith("***")]
    first = lines[0] if lines else "no detail"
    first = first if len(first) <= 100 else first[:97] + "..."
    return f"sqlite's check found {len(lines)} problem{'s' if len(lines) != 1 else ''}, the first: {first}"


class ResultsStore:
    """``results.sqlite`` of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            problems = [row[0] for row in self._conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(_problems_summary(problems))
            self._conn.executescript(_SCHEMA)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(results)")}
            for column, statement in _MIGRATIONS.items():
                if column not in columns:
                    with self._conn:
                        self._conn.execute(statement)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise DamagedStoreError(
                f"{self.path} is damaged ({exc}): rerun its recipe with `graftlens run RECIPE --restart` to move it aside "
                f"(kept as {self.path.name}.damaged-*) and start over"
            ) from None

    @classmethod
    def open_for_run(cls, path: str | Path, restart: bool) -> ResultsStore:
        """The store a run writes into; with ``restart``, a damaged store is moved aside (never
        deleted) and a new one begun."""
        try:
            return cls(path)
        except DamagedStoreError:
            if not restart:
                raise
        move_aside(Path(path))
        return cls(path)

    @classmethod
    def open_existing(cls, run_dir: str | Path) -> ResultsStore:
        path = Path(run_dir) / STORE_NAME
        if not path.is_file():
            raise StoreError(f"{run_dir} is not a run directory: {STORE_NAME} is missing")
        return cls(path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> object | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: object) -> None:
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def clear(self) -> None:
        """Forget every result and configuration (a restart)."""
        with self._conn:
            for table in ("meta", "configs", "results"):
                self._conn.execute(f"DELETE FROM {table}")

    # --- configurations -------------------------------------------------------------------------
    def set_configs(self, run: str, configs: Sequence[dict]) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM configs WHERE run = ?", (run,))
            self._conn.executemany(
                "INSERT INTO configs VALUES (?, ?, ?, ?, ?)",
                [(run, c["name"], i, c["group"], json.dumps(c, sort_keys=True)) for i, c in enumerate(configs)],
            )

    def configs(self, run: str) -> list[dict]:
        rows = self._conn.execute("SELECT spec FROM configs WHERE run = ? ORDER BY position", (run,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    # --- results --------------------------------------------------------------------------------
    def done(self, run: str, config: str) -> set[str]:
        """Ids of the examples already scored for ``config``."""
        rows = self._conn.execute("SELECT example FROM results WHERE run = ? AND config = ?", (run, config)).fetchall()
        return {r[0] for r in rows}

    def add(self, run: str, rows: Iterable[ResultRow]) -> None:
        """Write ``rows`` in one transaction: all of them or, if interrupted, none."""
        try:
            self._write_rows(run, rows)
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):  # SQLITE_FULL: the disk filled while the batch was committed
                raise StoreFullError(
                    f"{self.path}: the disk is full ({exc}): free some space and rerun the same command "
                    "(every batch committed before is kept)"
                ) from None
            raise

    def _write_rows(self, run: str, rows: Iterable[ResultRow]) -> None:
        with self._conn:
            self._conn.executemany(
                f"INSERT INTO results (run, {', '.join(_COLUMNS)}) VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
                [
                    (
                        run,
                        r.config,
                        r.example,
                        r.template,
                        r.direction,
                        r.prompt,
                        r.target,
                        r.target_prob,
                        r.target_rank,
                        json.dumps(list(r.top_tokens)),
                        json.dumps(dict(r.extra), sort_keys=True),
                        r.target_logprob,
                        r.continuation,
                    )
                    for r in rows
                ],
            )

    def rows(self, run: str) -> list[ResultRow]:
        """Every result of ``run``, in configuration order then example order of writing."""
        cur = self._conn.execute(
            f"SELECT {', '.join('r.' + c for c in _COLUMNS)} FROM results r "
            "JOIN configs c ON c.run = r.run AND c.name = r.config WHERE r.run = ? ORDER BY c.position, r.rowid",
            (run,),
        )
        return [ResultRow(*row[:8], tuple(json.loads(row[8])), json.loads(row[9]), *row[10:]) for row in cur.fetchall()]

    def target_probs(self, run: str, configs: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{config: {example: target probability}}`` of the results stored so far for ``configs``."""
        out: dict[str, dict[str, float]] = {c: {} for c in configs}
        for c in configs:
            cur = self._conn.execute("SELECT example, target_prob FROM results WHERE run = ? AND config = ?", (run, c))
            out[c] = dict(cur.fetchall())
        return out

    def total(self) -> int:
        """Results of any run in this store."""
        return self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def count(self, run: str) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM results WHERE run = ?", (run,)).fetchone()[0]
