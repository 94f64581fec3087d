"""Loading models and mapping their modules to canonical component names."""

from graftlens.models.adapters import ArchitectureAdapter, Site, adapter_for, supported_model_types
from graftlens.models.embedded import EMBEDDED_SPEC
from graftlens.models.fingerprint import model_fingerprint
from graftlens.models.loading import LoadedModel, as_loaded, check_device, load_model
from graftlens.models.names import expand_components, select_layers
from graftlens.models.run import position_ids_for, run_logits

__all__ = [
    "EMBEDDED_SPEC",
    "ArchitectureAdapter",
    "LoadedModel",
    "Site",
    "adapter_for",
    "as_loaded",
    "check_device",
    "expand_components",
    "load_model",
    "model_fingerprint",
    "position_ids_for",
    "run_logits",
    "select_layers",
    "supported_model_types",
]
