"""Files: written so that a reader never sees half of one (write aside, then rename), and read
as UTF-8 text with one error naming the file and line when they are not."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from graftlens.errors import DataError


class FileEncodingError(DataError):
    """A text file graftlens reads is not UTF-8."""


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """An OSError inside (a full disk on write, say) names ``path`` if the OS did not name a file."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling of ``path`` and rename it into place (creating the
    folders on the way). On any failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming(path):
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    """``data`` as sorted, indented JSON, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_utf8(path: str | Path) -> str:
    """The text of ``path``; a file that is not UTF-8 is one error naming it, the line and the byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FileEncodingError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); save the file as UTF-8"
        ) from None


def merge_tensors_atomic(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """Add ``tensors`` (name → torch tensor) and ``metadata`` to the safetensors file ``path`` (made
    if missing; a tensor or key of the same name is replaced), written aside and renamed into place."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Path(path)
    merged = load_file(path) if path.exists() else {}
    merged.update(tensors)
    if path.exists():
        with safe_open(str(path), "pt") as f:
            metadata = {**(f.metadata() or {}), **metadata}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming(path):
            save_file(merged, str(tmp), metadata=dict(metadata))
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def held_lock(lock_path: Path, holder_path: Path, on_busy: Callable[[str], None]) -> Iterator[None]:
    """Hold an OS file lock (``filelock``) for the block, with who holds it (PID, host, start time)
    written beside it in ``holder_path``. When another process holds it, ``on_busy(holder)`` is
    called with that process described: it raises to refuse at once, or returns to wait for the
    lock. The OS releases the lock of a process that dies, so a killed holder's lock is taken over.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_busy(lock_holder(holder_path))
        lock.acquire()
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        holder_path.write_text(json.dumps(holder) + "\n", encoding="utf-8")
        yield
    finally:
        holder_path.unlink(missing_ok=True)
        lock.release()


def lock_holder(holder_path: Path) -> str:
    """``process PID on HOST, started TIME`` from a :func:`held_lock` holder file, or ``an unknown process``."""
    try:
        h = json.loads(holder_path.read_text(encoding="utf-8"))
        return f"process {h['pid']} on {h['host']}, started {h['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"
