"""The HTML report of a run: one self-contained file (figures embedded as data URIs, no
scripts, no external references) with the tables, the manifest and how to reproduce it."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from graftlens.charts import METRIC_LABELS
from graftlens.fileio import write_text_atomic
from graftlens.methods import Table, method_for
from graftlens.report.build import make_figures, method_files, method_tables
from graftlens.results.metrics import Estimate
from graftlens.results.rundata import RunData, StoredConfig, load_run

REPORT_NAME = "report.html"
EXAMPLES_SHOWN = 4

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.text { text-align: left; }
td.text { white-space: normal; max-width: 22em; }
table td.text:last-child { max-width: 40em; }
thead th { background: #f4f4f4; }
.ci { color: #888; font-size: 11px; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 12px; }
.warn { background: #fff3cd; padding: .5em .8em; border-left: 4px solid #e0a800; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def write_report(run_dir: str | Path) -> Path:
    """Draw the figures and write ``run_dir/report.html``; returns its path."""
    run = load_run(run_dir)
    saved = make_figures(run)
    for name, text in method_files(run).items():
        write_text_atomic(run.run_dir / name, text)
    figures_html = "\n".join(_figure(f.png, f.title) for f in saved)
    html = _page(run, figures_html)
    path = run.run_dir / REPORT_NAME
    write_text_atomic(path, html)
    return path


def _page(run: RunData, figures_html: str) -> str:
    m = run.manifest
    name = escape(run.name or "run")
    metric = run.metric
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>graftlens · {name}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>graftlens · {name}</h1>",
        f"<p>{escape(str(run.recipe.get('description', '')))}</p>",
        f"<p>Run <code>{escape(run.run_id)}</code>: {len(run.configs)} configurations × {m.get('n_prompts', '?')} test prompts; "
        f"recipient model <code>{escape(str(m.get('recipient')))}</code>. Intervals are bootstrap 95% CIs over prompts "
        f"({run.n_boot} resamples, seed {run.seed}).</p>",
    ]
    if len(run.rows) < run.expected_rows:
        parts.append(
            f"<p class='warn'>Incomplete run: {len(run.rows)} of {run.expected_rows} results are in the store. "
            "Rerun the same command to finish it.</p>"
        )
    parts += ["<h2>Figures</h2>", figures_html or "<p>No figures.</p>"]
    listed = bool(_listed(run))  # a run of head-by-head sweeps alone has its figures and tables instead
    if listed:
        parts += ["<h2>All configurations</h2>", _summary_table(run)]
    parts.append("\n".join(_table(t) for t in method_tables(run)))
    if listed:
        parts += [f"<h2>By test template ({escape(METRIC_LABELS.get(metric, metric))})</h2>", _split_table(run, "template")]
        parts += [f"<h2>By direction ({escape(METRIC_LABELS.get(metric, metric))})</h2>", _split_table(run, "direction")]
        if len({r.direction for r in run.rows}) > 1:  # each test sentence in each direction: one bar of the paper's figures
            parts += [
                f"<h2>By test template and direction ({escape(METRIC_LABELS.get(metric, metric))})</h2>",
                _split_table(run, "template", "direction"),
            ]
    parts += ["<h2>Example predictions</h2>", _examples(run)]
    parts += ["<h2>Reproduce</h2>", _reproduce(run)]
    parts += ["<h2>Manifest</h2>", f"<pre>{escape(json.dumps(m, indent=2, sort_keys=True))}</pre>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _figure(png: Path, title: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    caption = f"{escape(title)} — also saved as <code>figures/{escape(png.stem)}.svg</code>"
    return f"<figure><img alt='{escape(title)}' src='data:image/png;base64,{data}'><figcaption>{caption}</figcaption></figure>"


def _cell(e: Estimate | int | str | None, digits: int = 3) -> str:
    if e is None:
        return "<td>–</td>"
    if isinstance(e, int):
        return f"<td>{e}</td>"
    if isinstance(e, str):
        return f"<td class='text'>{escape(e)}</td>"
    return f"<td>{e.value:.{digits}f} <span class='ci'>[{e.lo:.{digits}f}, {e.hi:.{digits}f}]</span></td>"


def _listed(run: RunData) -> list[StoredConfig]:
    """The configurations the summary tables list one by one (not those of head-by-head sweeps)."""
    return [c for c in run.configs if method_for(c.kind).summarised]


def _summary_table(run: RunData) -> str:
    metrics = ("top1", "top5", "top10", "mean_prob", "mean_rank")
    metrics += (run.metric,) if run.metric not in metrics else ()
    listed = _listed(run)
    table = run.summary(("config",), metrics, {c.name for c in listed})
    head = "".join(f"<th>{escape(METRIC_LABELS[k])}</th>" for k in metrics)
    rows = []
    for c in listed:
        entry = table.get((c.name,))
        if entry is None:
            continue
        grafts = _describe(c)
        cells = "".join(_cell(entry[k], 1 if k == "mean_rank" else 3) for k in metrics)
        rows.append(
            f"<tr><td title='{escape(grafts)}'>{escape(c.name)}</td><td>{escape(c.model)}</td>"
            f"<td class='text'>{escape(grafts)}</td><td>{entry['n']}</td>{cells}</tr>"
        )
    return (
        f"<table><thead><tr><th>configuration</th><th>model</th><th>grafts / method</th><th>n</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _split_table(run: RunData, *keys: str) -> str:
    listed = _listed(run)
    table = run.summary(("config", *keys), (run.metric,), {c.name for c in listed})
    columns = list(dict.fromkeys(tuple(getattr(r, k) for k in keys) for r in run.rows))
    head = "".join(f"<th>{escape(' · '.join(c))}</th>" for c in columns)
    rows = []
    for c in listed:
        cells = "".join(_cell(table.get((c.name, *col), {}).get(run.metric)) for col in columns)
        rows.append(f"<tr><td>{escape(c.name)}</td>{cells}</tr>")
    return f"<table><thead><tr><th>configuration</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _examples(run: RunData) -> str:
    shown = [c.name for c in run.reference_configs()] or [run.configs[0].name]
    if any(r.continuation is not None for r in run.rows):
        # What a grafted model says: the configuration whose target is most probable on average.
        probs: dict[str, list[float]] = {}
        for r in run.rows:
            if r.config not in shown and r.continuation is not None:
                probs.setdefault(r.config, []).append(r.target_prob)
        if probs:
            shown.append(max(probs, key=lambda name: sum(probs[name]) / len(probs[name])))
    by_key = {(r.config, r.example): r for r in run.rows}
    examples = list(dict.fromkeys(r.example for r in run.rows))[:EXAMPLES_SHOWN]
    out = []
    for ex in examples:
        first = next(r for r in run.rows if r.example == ex)
        items = []
        for name in shown:
            r = by_key.get((name, ex))
            if r is not None:
                tokens = " ".join(f"<code>{escape(repr(t))}</code>" for t in r.top_tokens)
                whole = "" if r.target_logprob is None else f", log p(whole target) = {r.target_logprob:.2f}"
                says = "" if r.continuation is None else f"<br>says: <code>{escape(repr(r.continuation))}</code>"
                items.append(
                    f"<li><b>{escape(name)}</b>: target rank {r.target_rank}, p = {r.target_prob:.3f}{whole}; "
                    f"top: {tokens}{says}</li>"
                )
        out.append(f"<p><i>{escape(first.prompt)}</i> → <b>{escape(repr(first.target))}</b></p><ul>{''.join(items)}</ul>")
    return "\n".join(out)


def _reproduce(run: RunData) -> str:
    m = run.manifest
    command = m.get("command") or f"graftlens run {m.get('recipe_file') or run.recipe.get('name')}"
    return (
        f"<pre>{escape(command)}\ngraftlens report {escape(str(run.run_dir))}</pre>"
        "<p>The same command resumes an interrupted run and reuses cached datasets and finetuned checkpoints. "
        "The recipe as run:</p>"
        f"<pre>{escape(json.dumps(run.recipe, indent=2))}</pre>"
    )


def _describe(config: StoredConfig) -> str:
    """What a configuration does, in one line: its grafts, or its method."""
    method = config.method
    if method:
        return method["kind"] + ": " + ", ".join(f"{k} {_as_text(v)}" for k, v in method.items() if k != "kind" and v is not None)
    return (
        "; ".join(
            f"{g['donor']}: {_as_text(g['components'])} @ layers {_as_text(g['layers'])} @ {g['positions']}"
            for g in config.grafts
        )
        or "no grafts"
    )


def _table(table: Table) -> str:
    """A method's table (e.g. knockout: per-layer change of each source), with 95% CIs."""
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    rows = "".join(
        f"<tr><td>{escape(label)}</td>{''.join(_cell(v, table.digits) for v in values)}</tr>" for label, values in table.rows
    )
    return (
        f"<h2>{escape(table.title)}</h2>"
        f"<table><thead><tr><th>{escape(table.corner)}</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def _as_text(value) -> str:
    if isinstance(value, list):
        if len(value) > 2 and all(isinstance(v, int) for v in value) and value == list(range(value[0], value[-1] + 1)):
            return f"{value[0]}–{value[-1]}"  # a run of layers
        return ",".join(map(str, value))
    return str(value)
