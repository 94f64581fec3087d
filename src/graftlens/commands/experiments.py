"""``graftlens run``, ``graftlens verify``, ``graftlens report``, ``graftlens export`` and ``graftlens recipes``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from graftlens.commands.support import console, err_console
from graftlens.errors import RecipeError

RUNS_DIR = Path("runs")


@contextmanager
def sweep_progress() -> Iterator[tuple]:
    """Progress bars for a run: one per model finetuned or tuned lens trained (added when it starts) and one for scoring."""
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console) as progress:
        tasks: dict[str, int] = {}

        def on_finetune(what: str, step: int, total: int, loss: float) -> None:
            name = what
            if name not in tasks:
                tasks[name] = progress.add_task(what, total=total, extra="")
            extra = f"loss {loss:.3f}" if loss == loss else ""
            progress.update(tasks[name], completed=step, total=total, extra=extra)

        def on_score(done: int, total: int) -> None:
            if "scoring" not in tasks:
                tasks["scoring"] = progress.add_task("scoring", total=total, extra="prompts")
            progress.update(tasks["scoring"], completed=done, total=total)

        yield on_finetune, on_score


def execute(
    recipe,
    recipe_path: Path,
    out: Path | None,
    resume: bool,
    device: str | None,
    command: str,
    ray: str | None = None,
    workers: int | None = None,
) -> Path:
    """Run a loaded recipe and write its report; returns the report's path (shared with ``graftlens demo``)."""
    from graftlens.experiments import run_recipe
    from graftlens.report import write_report

    run_dir = out or RUNS_DIR / recipe.name
    console.print(f"recipe [bold]{escape(recipe.name)}[/] ({escape(str(recipe_path))}) → {escape(str(run_dir))}")
    with sweep_progress() as (on_finetune, on_score):
        summary = run_recipe(
            recipe,
            run_dir,
            recipe_path=recipe_path,
            device=device,
            resume=resume,
            command=command,
            progress=on_score,
            finetune_progress=on_finetune,
            ray=ray,
            workers=workers,
        )
    reused = summary.total - summary.written
    console.print(
        f"{summary.n_configs} configurations × {summary.n_prompts} prompts: {summary.written} results computed"
        + (f", {reused} already in the store" if reused else "")
        + f" ({summary.seconds:.0f} s)"
    )
    if summary.workers:
        lost = f"; {summary.restarts} lost and restarted, their batches scored again" if summary.restarts else ""
        console.print(f"on Ray: {summary.workers} workers{lost}")
    with console.status("drawing figures and writing the report ..."):
        report = write_report(run_dir)
    return report


_SHORT_LABELS = {
    "top1": "top-1",
    "top5": "top-5",
    "top10": "top-10",
    "mean_prob": "mean prob",
    "attribute_rate": "attribute rate",
}


def results_table(run, max_rows: int = 24, panels: tuple[str, ...] | None = None) -> Table:
    """Top-1 and top-5 accuracy (and the run's own metric) of each configuration of a loaded run
    (bootstrap 95% CI), as a rich table."""
    from graftlens.methods import method_for

    metrics = ("top1", "top5") if run.metric in ("top1", "top5") else ("top1", "top5", run.metric)
    listed = [c for c in run.configs if method_for(c.kind).summarised]  # head-by-head sweeps: their heat maps
    summary = run.summary(("config",), metrics, {c.name for c in listed[:max_rows]})
    table = Table(title=f"{run.recipe.get('name')}: all test prompts (95% CI)", title_justify="left")
    for col in ("configuration", "n", *(_SHORT_LABELS.get(m, m) for m in metrics)):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    configs = [c for c in listed if panels is None or c.panel in panels]
    for c in configs[:max_rows]:
        e = summary.get((c.name,))
        if e is not None:
            table.add_row(escape(c.name), str(e["n"]), *(str(e[m]) for m in metrics))
    if len(configs) < len(run.configs) or len(configs) > max_rows:
        table.caption = f"{len(run.configs) - min(max_rows, len(configs))} more configurations in the report"
        table.caption_justify = "left"
    return table


def summary_tables(run) -> list[Table]:
    """What the CLI prints after a run: the summary of its configurations, or, when every
    configuration is one head of a head-by-head sweep, the method's own tables."""
    from graftlens.methods import method_for
    from graftlens.report.build import method_tables

    if any(method_for(c.kind).summarised for c in run.configs):
        return [results_table(run)]
    out = []
    for t in method_tables(run):
        table = Table(title=t.title, title_justify="left")
        for col in (t.corner, *t.columns):
            table.add_column(escape(col), overflow="fold")
        for label, values in t.rows:
            table.add_row(escape(label), *("–" if v is None else escape(v if isinstance(v, str) else str(v)) for v in values))
        out.append(table)
    return out


def run_cmd(
    recipe: str = typer.Argument(..., help="a recipe YAML file, or the name of a shipped recipe (see `graftlens recipes`)"),
    out: Path | None = typer.Option(None, help="run directory (default: runs/<recipe name>)"),
    resume: bool = typer.Option(True, "--resume/--restart", help="keep the results already in the run directory"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: where the models load)"),
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="[ADDRESS]",
        help="score on Ray workers (pip install 'graftlens\\[ray]'): --ray alone starts Ray here; "
        "--ray auto or --ray HOST:PORT joins a running cluster",
    ),
    workers: int | None = typer.Option(
        None, help="Ray workers (default: one per GPU of the cluster, else its CPUs ÷ this process's threads)"
    ),
) -> None:
    """Run a recipe's sweep into a results store, then write its figures and HTML report.

    Killed or interrupted? Run the same command again: finished results are kept, the rest is done."""
    from graftlens.errors import RecipeError
    from graftlens.experiments import load_recipe
    from graftlens.results import load_run

    if workers is not None and ray is None:
        raise RecipeError("--workers counts Ray workers: add --ray")
    command = f"graftlens run {recipe}" + (f" --out {out}" if out else "") + (f" --device {device}" if device else "")
    command += (f" --ray {ray}" if ray else "") + (f" --workers {workers}" if workers is not None else "")
    loaded, path = load_recipe(recipe)
    report = execute(loaded, path, out, resume, device, command, ray, workers)
    for table in summary_tables(load_run(report.parent)):
        console.print(table)
    console.print(f"report: [bold]{escape(str(report))}[/]")


def verify_cmd(
    run_dir: Path = typer.Argument(..., help="a finished run directory (holds results.sqlite and manifest.json)"),
    rows: str = typer.Option("32", "--rows", help="how many stored rows to re-score, or all (all of them if the run has fewer)"),
    seed: int = typer.Option(0, help="seed of the sample of rows"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: where the models load)"),
) -> None:
    """Re-score a seeded sample of a run's rows (or all of them) with the same models and inputs,
    compare every stored field, and check that every configuration was scored on every prompt.

    Exit 0 when every re-scored row matches the stored one within the run's tolerance and no row
    is missing; exit 1, naming the rows or configurations, when not."""
    from graftlens.experiments.verify import verify_run

    if rows != "all" and not rows.isdigit():
        raise RecipeError(f"--rows takes a number of rows or all, not {rows!r}")
    with progress_columns() as progress:
        task = progress.add_task("re-scoring", total=None)
        result = verify_run(
            run_dir,
            rows=None if rows == "all" else int(rows),
            seed=seed,
            device=device,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    scored = f"{result.checked} of {result.total} stored rows re-scored"
    if result.sampled:
        scored += f" (a sample drawn with seed {seed}; --rows all re-scores every one)"
    summary = f"{scored}; {result.matched} match within {result.tolerance:g}"
    if result.ok:
        console.print(f"[bold green]verified:[/] {summary}; all {result.expected} rows of the run are stored")
        return
    err_console.print(f"[bold red]mismatch:[/] {summary}", highlight=False)
    for config, n in result.missing.items():
        err_console.print(f"  configuration {escape(repr(config))}: {n} of its rows are missing", highlight=False, soft_wrap=True)
    if result.unexpected:
        err_console.print(f"  {result.unexpected} stored rows belong to no configuration or prompt of the run", highlight=False)
    for m in result.mismatches[:20]:
        err_console.print(f"  {escape(str(m))}", highlight=False, soft_wrap=True)
    if len(result.mismatches) > 20:
        err_console.print(f"  … and {len(result.mismatches) - 20} more", highlight=False)
    raise typer.Exit(code=1)


@contextmanager
def progress_columns() -> Iterator[Progress]:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, transient=True) as progress:
        yield progress


def report_cmd(run_dir: Path = typer.Argument(..., help="a run directory (holds results.sqlite)")) -> None:
    """Redraw the figures and rewrite the HTML report of a run."""
    from graftlens.report import write_report
    from graftlens.results import load_run

    with console.status("drawing figures and writing the report ..."):
        path = write_report(run_dir)
    for table in summary_tables(load_run(run_dir)):
        console.print(table)
    console.print(f"report: [bold]{escape(str(path))}[/]")


def export_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory (holds results.sqlite)"),
    csv: Path | None = typer.Option(None, "--csv", help="write a CSV file here"),
    parquet: Path | None = typer.Option(None, "--parquet", help="write a Parquet file here (needs pyarrow)"),
) -> None:
    """Export one row per (configuration, template, example): probability, rank and top-k hits."""
    from graftlens.errors import RecipeError
    from graftlens.results import load_run
    from graftlens.results.export import write_csv, write_parquet

    if csv is None and parquet is None:
        raise RecipeError("say where to write: --csv OUT.csv and/or --parquet OUT.parquet")
    run = load_run(run_dir)
    for path, writer in ((csv, write_csv), (parquet, write_parquet)):
        if path is not None:
            n = writer(run, path)
            console.print(f"{n} rows → {escape(str(path))}")


def recipes_cmd(
    action: str | None = typer.Argument(None, help="show: print a shipped recipe's YAML (to copy and edit)"),
    name: str | None = typer.Argument(None, help="the shipped recipe to show"),
) -> None:
    """List the shipped recipes (run one with `graftlens run NAME`); `graftlens recipes show NAME`
    prints one's YAML, to copy into a file of your own and edit."""
    from graftlens.experiments import load_recipe, shipped_recipes

    if action is not None:
        if action != "show" or name is None:
            raise RecipeError(f"graftlens recipes takes `show NAME`, not {' '.join(filter(None, [action, name]))!r}")
        if name not in shipped_recipes():
            raise RecipeError(f"no shipped recipe {name!r}; the shipped ones: {', '.join(shipped_recipes())}")
        _, path = load_recipe(name)
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    table = Table(title="shipped recipes", title_justify="left")
    table.add_column("name")
    table.add_column("what it runs")
    for recipe_name in shipped_recipes():
        recipe, _ = load_recipe(recipe_name)
        table.add_row(recipe_name, escape(recipe.description.strip().split("\n")[0]))
    console.print(table)
    console.print("print one to copy and edit: graftlens recipes show NAME > my-recipe.yaml", highlight=False)
