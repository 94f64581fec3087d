"""Export a run's results as a flat table: one row per (configuration, template, example)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from graftlens.errors import StoreError
from graftlens.fileio import write_text_atomic
from graftlens.results.rundata import RunData

COLUMNS = (
    "recipe",
    "config",
    "group",
    "template",
    "direction",
    "example",
    "prompt",
    "target",
    "target_prob",
    "target_rank",
    "top1",
    "top5",
    "top10",
    "top_tokens",
    "target_logprob",
    "continuation",
)


def extra_columns(run: RunData) -> list[str]:
    """The further measures some row holds (``attribute_rate``), sorted; none for most runs."""
    return sorted({key for r in run.rows for key in r.extra})


def table_rows(run: RunData) -> list[dict]:
    recipe = run.name
    panels = {c.name: c.panel for c in run.configs}
    extras = extra_columns(run)
    return [
        {
            "recipe": recipe,
            "config": r.config,
            "group": panels.get(r.config, ""),  # the panel
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
            "target_logprob": "" if r.target_logprob is None else r.target_logprob,  # empty: not measured
            "continuation": "" if r.continuation is None else r.continuation,
            **{key: r.extra.get(key, "") for key in extras},
        }
        for r in run.rows
    ]


def write_csv(run: RunData, path: Path) -> int:
    rows = table_rows(run)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, *extra_columns(run)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(Path(path), buf.getvalue())
    return len(rows)


def write_parquet(run: RunData, path: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise StoreError("--parquet needs pyarrow: pip install 'graftlens[parquet]' (or use --csv)") from None
    rows = table_rows(run)
    extras = extra_columns(run)
    optional = ("target_logprob", "continuation")
    table = pa.table(
        {
            **{c: [r[c] for r in rows] for c in COLUMNS if c not in optional},
            **{c: [r[c] if r[c] != "" else None for r in rows] for c in optional},
            **{c: [r[c] if r[c] != "" else None for r in rows] for c in extras},  # float, null where absent
        }
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return len(rows)
