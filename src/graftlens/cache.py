"""Where graftlens keeps what it builds once and reuses: converted models, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "GRAFTLENS_CACHE"


def cache_dir() -> Path:
    """The cache root: ``$GRAFTLENS_CACHE``, else ``$XDG_CACHE_HOME/graftlens``, else ``~/.cache/graftlens``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        root = Path(explicit).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "graftlens"
    root.mkdir(parents=True, exist_ok=True)
    return root
