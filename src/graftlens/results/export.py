"""Export a run's results as a flat table: one row per (configuration, template, example)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from graftlens.errors import GraftlensError
from graftlens.fileio import write_text_atomic
from graftlens.results.rundata import RunData

COLUMNS = (
    "recipe", "config", "group", "template", "direction", "example", "prompt", "target",
    "target_prob", "target_rank", "top1", "top5", "top10", "top_tokens",
)  # fmt: skip


def table_rows(run: RunData) -> list[dict]:
    recipe = run.name
    groups = {c.name: c.group for c in run.configs}
    return [
        {
            "recipe": recipe,
            "config": r.config,
            "group": groups.get(r.config, ""),
            "template": r.template,
            "direction": r.direction,
            "example": r.example,
            "prompt": r.prompt,
            "target": r.target,
            "target_prob": r.target_prob,
            "target_rank": r.target_rank,
            "top1": int(r.hit(1)),
            "top5": int(r.hit(5)),
            "top10": int(r.hit(10)),
            "top_tokens": json.dumps(list(r.top_tokens), ensure_ascii=False),
        }
        for r in run.rows
    ]


def write_csv(run: RunData, path: Path) -> int:
    rows = table_rows(run)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(Path(path), buf.getvalue())
    return len(rows)


def write_parquet(run: RunData, path: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise GraftlensError("--parquet needs pyarrow: pip install 'graftlens[parquet]' (or use --csv)") from None
    rows = table_rows(run)
    table = pa.table({c: [r[c] for r in rows] for c in COLUMNS})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return len(rows)
