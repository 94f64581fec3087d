"""What a manifest records about the software that made a result."""

from __future__ import annotations

import platform
from importlib import metadata


def run_versions() -> dict[str, str]:
    """Versions of Python and of the packages that decide the numbers."""
    out = {"python": platform.python_version()}
    for pkg in ("graftlens", "torch", "transformers", "peft", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
