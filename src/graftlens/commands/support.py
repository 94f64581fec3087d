"""What every CLI command shares: consoles, the one-line error wrapper, progress bars, tables."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from graftlens.errors import GraftlensError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn any :class:`GraftlensError` into one red line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GraftlensError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(description: str, total: int | None = None, show_loss: bool = False) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields ``update(completed, total=None, loss=None)``."""
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if show_loss:
        columns.append(TextColumn("loss {task.fields[loss]}"))
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total, loss="-")

        def update(completed: int, total: int | None = None, loss: float | None = None) -> None:
            fields: dict[str, Any] = {}
            if loss is not None and loss == loss:  # not NaN
                fields["loss"] = f"{loss:.3f}"
            progress.update(task, completed=completed, total=total if total is not None else progress.tasks[0].total, **fields)

        yield update


def metrics_table(
    title: str, rows: dict[str, dict[str, float]], columns: tuple[str, ...] = ("n", "top1", "top5", "mean_prob")
) -> Table:
    """A table of metric dicts keyed by row name."""
    table = Table(title=title, title_justify="left")
    table.add_column("group")
    for c in columns:
        table.add_column(c, justify="right")
    for name, m in rows.items():
        table.add_row(name, *(_fmt(m.get(c)) for c in columns))
    return table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
