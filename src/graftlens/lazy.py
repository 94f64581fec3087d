"""Package namespaces declared once, loaded on first use (PEP 562).

A package that re-exports from modules importing torch or transformers would make every import
of any of its modules pay for them (Python runs a package's ``__init__`` first). A package
therefore declares its public names once, as ``{home module: [names]}``, and
`lazy_exports` turns that one declaration into

- ``__all__``;
- a ``__getattr__`` that imports a name's home module when the name is first asked for, so
  ``graftlens.models.names`` or ``graftlens.train.config`` import in milliseconds and reading a
  recipe or ``--help`` needs no torch;
- the type-checking names: ``make stubs`` (`write_stubs`) writes each package's ``__init__.pyi``
  stub from the same declaration (type checkers, editors and the API reference read it), and a
  test fails when a stub differs from what its declaration gives.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# The packages that declare their names with `lazy_exports` (their stubs are generated).
DECLARING_PACKAGES = (
    "graftlens",
    "graftlens.eval",
    "graftlens.experiments",
    "graftlens.graft",
    "graftlens.interventions",
    "graftlens.models",
    "graftlens.train",
)


def lazy_exports(namespace: dict[str, Any], exports: Mapping[str, Sequence[str]], eager: Sequence[str] = ()) -> None:
    """Declare the public names of the package whose globals are ``namespace``.

    ``exports`` maps each home module to the names it gives; ``eager`` names are already bound in
    ``namespace`` (``__version__``). Sets ``__all__``, ``__getattr__`` and ``__dir__``."""
    package = namespace["__name__"]
    home_of: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in home_of:
                raise ValueError(f"{package}: {name!r} is declared twice ({home_of[name]} and {module})")
            home_of[name] = module

    def __getattr__(name: str) -> Any:
        module = home_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module)
        # Bind every name this module exports at once: importing ``package.finetune`` sets the
        # package attribute ``finetune`` to the submodule, which would shadow the exported
        # function of that name if it were asked for after another name of the same module.
        for other in exports[module]:
            namespace[other] = getattr(loaded, other)
        return namespace[name]

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(home_of))

    getter: Callable[[str], Any] = __getattr__
    namespace["__getattr__"] = getter
    namespace["__dir__"] = __dir__
    namespace["__all__"] = [*eager, *sorted(home_of, key=str.lower)]
    namespace["_EXPORTS"] = {module: tuple(names) for module, names in exports.items()}


def stub_text(package: str) -> str:
    """The ``__init__.pyi`` that the declaration of ``package`` (imported) gives."""
    namespace = vars(importlib.import_module(package))
    exports: dict[str, tuple[str, ...]] = namespace["_EXPORTS"]
    doc = (namespace.get("__doc__") or "").strip().splitlines()
    lines = [
        f'"""{doc[0] if doc else package} (type stub)."""',
        "",
        "# Generated from the package's lazy_exports declaration by `make stubs`; do not edit.",
        "",
    ]
    eager = [n for n in namespace["__all__"] if not any(n in names for names in exports.values())]
    if "__version__" in eager:
        lines.append("__version__: str")
    for module in sorted(exports):
        lines.append(f"from {module} import (")
        lines += [f"    {n} as {n}," for n in sorted(exports[module], key=str.lower)]
        lines.append(")")
    lines += ["", "__all__ = ["] + [f'    "{n}",' for n in namespace["__all__"]] + ["]", ""]
    return "\n".join(lines)


def stub_path(package: str) -> Path:
    module = importlib.import_module(package)
    return Path(module.__file__).with_suffix(".pyi")


def write_stubs() -> list[Path]:
    """Write every declaring package's ``__init__.pyi``; returns the files written."""
    written = []
    for package in DECLARING_PACKAGES:
        path = stub_path(package)
        path.write_text(stub_text(package))
        written.append(path)
    return written
