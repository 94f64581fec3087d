"""One writer per run directory.

A run holds ``run.lock`` (an OS file lock, through ``filelock``) from before it reads the store
until it ends, so two processes never write one run directory at once: the second is refused
at once, naming the holder from ``run.lock.json`` (its PID, host and start time). The OS
releases the lock of a process that dies, so a lock left by a killed run is simply taken over.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graftlens.fileio import held_lock
from graftlens.results.store import StoreError

LOCK_NAME = "run.lock"
HOLDER_NAME = "run.lock.json"


class RunLockedError(StoreError):
    """Another process is writing this run directory."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the block, or raise `RunLockedError` at once."""
    run_dir.mkdir(parents=True, exist_ok=True)

    def refuse(holder: str) -> None:
        raise RunLockedError(
            f"{run_dir} is being written by another run ({holder}); wait for it to finish, stop it, or choose another --out"
        )

    with held_lock(run_dir / LOCK_NAME, run_dir / HOLDER_NAME, refuse):
        yield
