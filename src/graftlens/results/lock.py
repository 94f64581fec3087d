"""One writer per run directory.

A run holds ``run.lock`` (an OS file lock, through ``filelock``) from before it reads the store
until it ends, so two processes never write one run directory at once: the second is refused
at once, naming the holder from ``run.lock.json`` (its PID, host and start time). The OS
releases the lock of a process that dies, so a lock left by a killed run is simply taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from graftlens.results.store import StoreError

LOCK_NAME = "run.lock"
HOLDER_NAME = "run.lock.json"


class RunLockedError(StoreError):
    """Another process is writing this run directory."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the block, or raise `RunLockedError` at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_NAME))
    holder_file = run_dir / HOLDER_NAME
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLockedError(
            f"{run_dir} is being written by another run ({_holder(holder_file)}); "
            "wait for it to finish, stop it, or choose another --out"
        ) from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        holder_file.write_text(json.dumps(holder) + "\n", encoding="utf-8")
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
        return f"process {h['pid']} on {h['host']}, started {h['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
