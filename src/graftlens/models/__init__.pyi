"""Loading models and mapping their modules to canonical component names. (type stub)."""

# Generated from the package's lazy_exports declaration by `make stubs`; do not edit.

from graftlens.models.adapters import (
    adapter_for as adapter_for,
    ArchitectureAdapter as ArchitectureAdapter,
    Site as Site,
    supported_model_types as supported_model_types,
)
from graftlens.models.embedded import (
    EMBEDDED_SPEC as EMBEDDED_SPEC,
)
from graftlens.models.fingerprint import (
    model_fingerprint as model_fingerprint,
)
from graftlens.models.loading import (
    as_loaded as as_loaded,
    check_device as check_device,
    load_model as load_model,
    LoadedModel as LoadedModel,
)
from graftlens.models.names import (
    expand_components as expand_components,
    select_layers as select_layers,
)
from graftlens.models.run import (
    position_ids_for as position_ids_for,
    run_logits as run_logits,
)
from graftlens.models.tiny import (
    tiny_configs as tiny_configs,
    tiny_model as tiny_model,
)

__all__ = [
    "adapter_for",
    "ArchitectureAdapter",
    "as_loaded",
    "check_device",
    "EMBEDDED_SPEC",
    "expand_components",
    "load_model",
    "LoadedModel",
    "model_fingerprint",
    "position_ids_for",
    "run_logits",
    "select_layers",
    "Site",
    "supported_model_types",
    "tiny_configs",
    "tiny_model",
]
