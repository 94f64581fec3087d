"""Package namespaces whose names load on first use (PEP 562).

A package that re-exports from modules importing torch or transformers would make every import
of any of its modules pay for them (Python runs a package's ``__init__`` first). With
:func:`lazy_exports`, ``graftlens.models.names`` or ``graftlens.train.config`` import in
milliseconds, so reading a recipe or ``--help`` needs no torch; the names still resolve to the
objects of their home modules on first access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(namespace: dict[str, Any], exports: Mapping[str, str]) -> None:
    """Give the package whose globals are ``namespace`` a ``__getattr__`` that imports
    ``exports[name]`` (a module path) when ``name`` is first asked for, and a ``__dir__``."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module)
        # Bind every name this module exports at once: importing ``package.finetune`` sets the
        # package attribute ``finetune`` to the submodule, which would shadow the exported
        # function of that name if it were asked for after another name of the same module.
        for other, home in exports.items():
            if home == module:
                namespace[other] = getattr(loaded, other)
        return namespace[name]

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    getter: Callable[[str], Any] = __getattr__
    namespace["__getattr__"] = getter
    namespace["__dir__"] = __dir__
