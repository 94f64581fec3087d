"""Loading models and mapping their modules to canonical component names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "ArchitectureAdapter": "graftlens.models.adapters",
        "Site": "graftlens.models.adapters",
        "adapter_for": "graftlens.models.adapters",
        "supported_model_types": "graftlens.models.adapters",
        "EMBEDDED_SPEC": "graftlens.models.embedded",
        "model_fingerprint": "graftlens.models.fingerprint",
        "LoadedModel": "graftlens.models.loading",
        "as_loaded": "graftlens.models.loading",
        "check_device": "graftlens.models.loading",
        "load_model": "graftlens.models.loading",
        "expand_components": "graftlens.models.names",
        "select_layers": "graftlens.models.names",
        "position_ids_for": "graftlens.models.run",
        "run_logits": "graftlens.models.run",
    },
)

if TYPE_CHECKING:
    from graftlens.models.adapters import ArchitectureAdapter, Site, adapter_for, supported_model_types
    from graftlens.models.embedded import EMBEDDED_SPEC
    from graftlens.models.fingerprint import model_fingerprint
    from graftlens.models.loading import LoadedModel, as_loaded, check_device, load_model
    from graftlens.models.names import expand_components, select_layers
    from graftlens.models.run import position_ids_for, run_logits

__all__ = [
    "ArchitectureAdapter",
    "EMBEDDED_SPEC",
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
