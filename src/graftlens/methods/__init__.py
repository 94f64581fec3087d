"""Methods: every kind of experiment, one module each, named after its kind and found through one
registry; what methods share lives in `graftlens.methods.core`.

Importing this package imports every module in it, so each method registers itself; see
`graftlens.methods.core.registry` for what a method owns and the contributors' guide for
adding one."""

import importlib
import pkgutil

from graftlens.methods.core.parts import GraftSpec, RecipeError, RunConfig, Strict, Sweep
from graftlens.methods.core.registry import Execution, Method, Table, check_config, method_for, methods, register, sweep_types

for _module in pkgutil.iter_modules(__path__):
    if _module.ispkg:  # core: shared helpers, no kind
        continue
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Execution",
    "GraftSpec",
    "Method",
    "RecipeError",
    "RunConfig",
    "Strict",
    "Sweep",
    "Table",
    "check_config",
    "method_for",
    "methods",
    "register",
    "sweep_types",
]
