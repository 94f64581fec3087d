"""Files: written so that a reader never sees half of one (write aside, then rename), and read
as UTF-8 text with one error naming the file and line when they are not."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator, Mapping
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
