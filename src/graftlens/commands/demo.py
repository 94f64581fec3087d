"""``graftlens demo``: the main job on the embedded model, end to end.

It runs the shipped ``demo`` recipe into ``runs/demo``:

1. make the default new-fact dataset (12 made-up movies; cached);
2. finetune the embedded model on it (cached by content hash; a killed run resumes);
3. score the pretrained and finetuned models on the held-out test templates, both directions;
4. graft the finetuned weights into the pretrained model by position set (FE, LT, FE+LT and
   complements) and by component × layer group at the last token;
5. write figures and ``runs/demo/report.html``.

Rerunning it keeps what is done: the results store resumes, the checkpoint is reused.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from graftlens.commands.experiments import execute, results_table
from graftlens.experiments import load_recipe
from graftlens.models import EMBEDDED_SPEC
from graftlens.results import RunData, load_run, summary

DEMO_RECIPE = "demo"
DEMO_RUN_DIR = Path("runs") / "demo"


def run_demo(spec: str, console: Console, out: Path = DEMO_RUN_DIR, restart: bool = False) -> Path:
    recipe, path = load_recipe(DEMO_RECIPE)
    if spec != EMBEDDED_SPEC:
        models = dict(recipe.models)
        models["pre"] = models["pre"].model_copy(update={"spec": spec})
        recipe = recipe.model_copy(update={"models": models})
    console.print(
        f"[bold]graftlens demo[/] on {escape(spec)}: finetune it on {recipe.data.facts} made-up movies (cached), then graft "
        "the finetuned weights into the pretrained model by position and by component."
    )
    command = "graftlens demo" + (f" --model {spec}" if spec != EMBEDDED_SPEC else "")
    report = execute(recipe, path, out, not restart, None, command)
    run = load_run(out)
    console.print(results_table(run, panels=("configs", "positions")))
    console.print(_by_direction(run))
    _show_example(console, run)
    console.print(f"report: [bold]{escape(str(report))}[/]  (figures in {escape(str(out / 'figures'))})")
    return report


def _by_direction(run: RunData) -> Table:
    """Top-5 accuracy of the reference and position configurations, forward and backward."""
    table_data = summary(run.rows, ("config", "direction"), ("top5",), n_boot=0)
    directions = list(dict.fromkeys(r.direction for r in run.rows))
    table = Table(title="top-5 by direction", title_justify="left")
    table.add_column("configuration")
    for d in directions:
        table.add_column(d, justify="right")
    for c in run.configs:
        if c.panel in ("configs", "positions"):
            table.add_row(escape(c.name), *(f"{table_data[(c.name, d)]['top5'].value:.2f}" for d in directions))
    return table


def _show_example(console: Console, run: RunData) -> None:
    first = run.rows[0].example
    rows = [r for r in run.rows if r.example == first and r.config in ("PRE", "SFT", "FE+LT")]
    table = Table(title=f"top-5 after {rows[0].prompt!r} (target {rows[0].target!r})", title_justify="left")
    table.add_column("configuration")
    table.add_column("top-5 next tokens")
    for r in rows:
        table.add_row(r.config, escape("  ".join(repr(t) for t in r.top_tokens)))
    console.print(table)
