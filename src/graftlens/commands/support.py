"""What every CLI command shares: consoles, the one-line error wrapper, progress bars, tables."""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from graftlens.errors import GraftlensError, GraftlensNote, RenamedRecipeKey

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


DEBUG_ENV = "GRAFTLENS_DEBUG"
INTERRUPTED_EXIT = 130


def debugging() -> bool:
    """``--debug`` (or ``GRAFTLENS_DEBUG=1``): let unexpected errors show their traceback."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe_os_error(exc: OSError) -> str:
    """One line for a filesystem fault: what, which file, and what to do."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.filename2:
        where += f" → {exc.filename2}"
    reason = exc.strerror or str(exc)
    hints = {
        errno.ENOSPC: "free some space and rerun the same command (finished results are kept)",
        errno.EDQUOT: "free some space and rerun the same command (finished results are kept)",
        errno.EACCES: "choose a place you may write to, or change its permissions",
        errno.EPERM: "choose a place you may write to, or change its permissions",
        errno.EROFS: "choose a place on a writable file system",
        errno.ENOENT: "check the path (a folder on the way may be missing)",
        errno.EISDIR: "give a file name, not a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "choose another name, or remove what is there",
    }
    hint = hints.get(exc.errno or -1)
    return f"{reason}:{where}" + (f" — {hint}" if hint else "")


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:
    """A renamed recipe key or a note is one yellow line; other warnings show as Python shows them."""
    if issubclass(category, RenamedRecipeKey | GraftlensNote):
        err_console.print(f"[yellow]note:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def friendly_errors(fn: F) -> F:
    """The CLI's one boundary for errors: every fault a user can cause or meet is one red line
    (exit 2), an interrupt says what was kept (exit 130), and anything else is reported as a bug
    with the way to see its traceback (exit 1; ``--debug`` re-raises it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", RenamedRecipeKey)
                warnings.simplefilter("always", GraftlensNote)
                warnings.showwarning = _show_notice
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except GraftlensError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(describe_os_error(exc))
        except UnicodeDecodeError as exc:
            _fail(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8")
        except sqlite3.DatabaseError as exc:
            if "full" in str(exc):  # SQLITE_FULL: the disk filled while a batch was committed
                _fail(
                    f"the results store could not be written ({exc}): free some space and rerun the same command "
                    "(every batch committed before is kept)"
                )
            _fail(f"the results store cannot be read ({exc}): rerun with --restart to move it aside and start over")
        except KeyboardInterrupt:
            err_console.print(
                "[bold yellow]interrupted:[/] everything finished so far is kept; run the same command again to go on",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(code=INTERRUPTED_EXIT) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence, never a silent traceback
            if debugging():
                raise
            err_console.print(
                f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}. This is a bug in graftlens: "
                f"rerun with --debug (or {DEBUG_ENV}=1) to see the traceback, and report it.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> None:
    """One red line. A message that carries a library's own detail on further lines (a torch or
    YAML report, say) shows its first line; ``--debug`` shows all of it."""
    lines = [line for line in message.splitlines() if line.strip()] or [message]
    if len(lines) > 1 and not debugging():
        message = f"{lines[0].rstrip(':')} (rerun with --debug for the details)"
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2) from None


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
    table.add_column("prompts")
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
