"""graftlens: where does a finetuned model keep what it newly learned, and how does it retrieve it?

Start with :func:`load_model`; graft with :func:`grafting` / :func:`grafted_forward`; read and
write activations with :func:`capture`, :func:`edit` and :class:`Patch`; see the README.

The names below are loaded on first use (PEP 562), so ``import graftlens`` and the commands that
do not run a model (``--help``, ``recipes``, a recipe with a typo) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from graftlens.errors import (
    GraftlensError,
    LayerSelectionError,
    ModelLoadError,
    UnknownComponentError,
    UnsupportedArchitectureError,
)

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ["DonorError", "Graft", "Grafter", "GraftRuleError", "grafted_forward", "grafted_generate", "grafting"],
        "graftlens.graft",
    ),
    **dict.fromkeys(["PositionError", "parse_positions"], "graftlens.positions"),
    **dict.fromkeys(
        ["ActivationCache", "Patch", "Point", "attention_knockout", "capture", "cross_model_patched_logits", "edit",
         "parse_point", "patched_logits", "point_logits", "project", "run_with_cache"],
        "graftlens.interventions",
    ),  # fmt: skip
    **dict.fromkeys(
        ["EMBEDDED_SPEC", "ArchitectureAdapter", "LoadedModel", "adapter_for", "expand_components", "load_model",
         "run_logits", "select_layers", "supported_model_types"],
        "graftlens.models",
    ),  # fmt: skip
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graftlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from graftlens.graft import DonorError, Graft, Grafter, GraftRuleError, grafted_forward, grafted_generate, grafting
    from graftlens.interventions import (
        ActivationCache,
        Patch,
        Point,
        attention_knockout,
        capture,
        cross_model_patched_logits,
        edit,
        parse_point,
        patched_logits,
        point_logits,
        project,
        run_with_cache,
    )
    from graftlens.models import (
        EMBEDDED_SPEC,
        ArchitectureAdapter,
        LoadedModel,
        adapter_for,
        expand_components,
        load_model,
        run_logits,
        select_layers,
        supported_model_types,
    )
    from graftlens.positions import PositionError, parse_positions

__all__ = [
    "GraftlensError",
    "LayerSelectionError",
    "ModelLoadError",
    "UnknownComponentError",
    "UnsupportedArchitectureError",
    "__version__",
    "DonorError",
    "Graft",
    "Grafter",
    "GraftRuleError",
    "grafted_forward",
    "grafted_generate",
    "grafting",
    "PositionError",
    "parse_positions",
    "ActivationCache",
    "Patch",
    "Point",
    "attention_knockout",
    "capture",
    "cross_model_patched_logits",
    "edit",
    "parse_point",
    "patched_logits",
    "point_logits",
    "project",
    "run_with_cache",
    "EMBEDDED_SPEC",
    "ArchitectureAdapter",
    "LoadedModel",
    "adapter_for",
    "expand_components",
    "load_model",
    "run_logits",
    "select_layers",
    "supported_model_types",
]
