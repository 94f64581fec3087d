"""Loading models and mapping their modules to canonical component names."""

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "graftlens.models.adapters": ["adapter_for", "ArchitectureAdapter", "Site", "supported_model_types"],
        "graftlens.models.embedded": ["EMBEDDED_SPEC"],
        "graftlens.models.fingerprint": ["model_fingerprint"],
        "graftlens.models.loading": ["as_loaded", "check_device", "load_model", "LoadedModel"],
        "graftlens.models.names": ["expand_components", "select_layers"],
        "graftlens.models.run": ["position_ids_for", "run_logits"],
        "graftlens.models.tiny": ["tiny_configs", "tiny_model"],
    },
)
