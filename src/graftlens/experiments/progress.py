"""Progress of long phases (finetuning, lens training) seen from the library: a bar on a
terminal, and on a log (stdout or stderr redirected to a file, a CI job) one plain line at most
every ``LOG_EVERY_S`` seconds with the step, the rate and the time left."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

LOG_EVERY_S = 30.0

Progress = Callable[[int, int], None]
"""A callback of a run's work: ``(units done, units in all)``, in prompts scored (or re-scored)."""


class PhaseProgress:
    """A ``(what, step, total, loss)`` callback (what `prepare_models`
    takes) that reports to ``stream``: a rich bar when it is a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, every_s: float = LOG_EVERY_S):
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.bar = None
        self.tasks: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.last_line = 0.0

    def __call__(self, what: str, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        self.started.setdefault(what, now)
        if self.stream.isatty():
            self._bar(what, step, total, loss)
        elif step in (0, 1, total) or now - self.last_line >= self.every_s:
            self.last_line = now
            print(self.line(what, step, total, loss, now - self.started[what]), file=self.stream, flush=True)

    @staticmethod
    def line(what: str, step: int, total: int, loss: float, elapsed: float) -> str:
        """``finetuning sft: step 12/102 (12%), 2.71 s/step, loss 1.234, about 4 min left``."""
        if step == 0:
            return f"{what}: {total} steps to go"
        rate = elapsed / step if step else 0.0
        left = rate * (total - step)
        remaining = f"about {left / 60:.0f} min left" if left >= 90 else f"about {left:.0f} s left"
        done = "done" if step >= total else remaining
        return f"{what}: step {step}/{total} ({100 * step // max(total, 1)}%), {rate:.2f} s/step, loss {loss:.3f}, {done}"

    def _bar(self, what: str, step: int, total: int, loss: float) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self.bar is None:
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
            self.bar = Progress(*columns, console=Console(file=self.stream), transient=True)
            self.bar.start()
        if what not in self.tasks:
            self.tasks[what] = self.bar.add_task(what, total=total)
        self.bar.update(self.tasks[what], completed=step, description=f"{what} (loss {loss:.3f})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@contextmanager
def phase_progress(stream: TextIO | None = None) -> Iterator[PhaseProgress]:
    """A `PhaseProgress` for the block, its bar (if any) closed at the end."""
    progress = PhaseProgress(stream)
    try:
        yield progress
    finally:
        progress.close()
