"""graftlens: where does a finetuned model keep what it newly learned, and how does it retrieve it?

Start with :func:`load_model`; see the README for the grafting and patching methods.
"""

from graftlens.errors import (
    GraftlensError,
    LayerSelectionError,
    ModelLoadError,
    UnknownComponentError,
    UnsupportedArchitectureError,
)
from graftlens.graft import (
    DonorError,
    Graft,
    Grafter,
    GraftRuleError,
    PositionError,
    grafted_forward,
    grafting,
    parse_positions,
)
from graftlens.models import (
    EMBEDDED_SPEC,
    ArchitectureAdapter,
    LoadedModel,
    adapter_for,
    expand_components,
    load_model,
    select_layers,
    supported_model_types,
)

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED_SPEC",
    "DonorError",
    "Graft",
    "GraftRuleError",
    "Grafter",
    "PositionError",
    "grafted_forward",
    "grafting",
    "parse_positions",
    "ArchitectureAdapter",
    "GraftlensError",
    "LayerSelectionError",
    "LoadedModel",
    "ModelLoadError",
    "UnknownComponentError",
    "UnsupportedArchitectureError",
    "__version__",
    "adapter_for",
    "expand_components",
    "load_model",
    "select_layers",
    "supported_model_types",
]
