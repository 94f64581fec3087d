"""graftlens: where does a finetuned model keep what it newly learned, and how does it retrieve it?

Start with :func:`load_model`; graft with :func:`grafting` / :func:`grafted_forward`; read and
write activations with :func:`capture`, :func:`edit` and :class:`Patch`; see the README.
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

__version__ = "0.1.0"

__all__ = [
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
    "run_logits",
    "run_with_cache",
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
