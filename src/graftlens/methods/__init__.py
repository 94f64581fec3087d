"""Methods: every kind of experiment, one module each, found through one registry.

Importing this package imports every module in it, so each method registers itself; see
:mod:`graftlens.methods.registry` for what a method owns and the README for adding one."""

import importlib
import pkgutil

from graftlens.methods.base import GraftSpec, RecipeError, RunConfig, Strict, Sweep
from graftlens.methods.registry import Context, Method, Table, check_config, method_for, methods, register, sweep_types

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Context",
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
