"""A model's identity: its configuration's content and its weights, nothing about where or how
it was loaded. Finetuned checkpoints are named by their base's fingerprint, and runs record the
fingerprint of every model they score, so the same weights must give the same fingerprint from
a symlinked cache, a copied directory or a moved cache.

    >>> from graftlens.models import tiny_model, model_fingerprint
    >>> model_fingerprint(tiny_model("llama").model) == model_fingerprint(tiny_model("llama").model)
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

#: Configuration keys that say where or how a model was loaded or is run, not what it is: the
#: path it was read from, the library version that wrote it, flags of the forward pass, the
#: attention implementation and the load-time dtype (the weights' own dtypes are hashed with
#: them). Keys that start with an underscore are transformers' runtime state and are left out too.
RUNTIME_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "output_scores",
        "return_dict",
        "return_dict_in_generate",
        "torchscript",
        "attn_implementation",
        "dtype",
        "torch_dtype",
    }
)

# Bumped when what the fingerprint covers changes, so two formulas never give the same digest.
_FORMAT = b"graftlens model fingerprint 2\n"


def config_content(config: Any) -> dict:
    """The configuration as a dict of what defines the model: `RUNTIME_CONFIG_KEYS` and
    underscore keys (``_name_or_path``, ``_attn_implementation``, ...) left out, in nested
    configurations too (a multimodal model's ``text_config``)."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return _content(values)


def _content(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: _content(v) for k, v in values.items() if not (str(k).startswith("_") or k in RUNTIME_CONFIG_KEYS)}
    if isinstance(values, list | tuple):
        return [_content(v) for v in values]
    return values


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """16 hex digits naming ``model``'s configuration content and weights.

    Hashes `config_content` and, per parameter, its name, shape, dtype and two float64 sums:
    two models with the same fingerprint have the same configuration and (up to an astronomically
    unlikely coincidence of sums) the same weights. It costs one pass over the parameters."""
    h = hashlib.sha256(_FORMAT)
    config = getattr(model, "config", None)
    if config is not None:
        h.update(json.dumps(config_content(config), sort_keys=True, default=str).encode())
    for name, p, t in _parameters(model):
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{_sums(t)}\n".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def legacy_fingerprints(model: nn.Module, locations: Iterable[str] = ()) -> set[str]:
    """The fingerprints graftlens 0.1 gave ``model`` (they hashed the configuration's JSON, which
    names the path the model was read from): as loaded now, and as if read from each of
    ``locations`` (the sources that runs and finetune manifests recorded). Runs and finetuned
    checkpoints named by such a fingerprint are recognised through them."""
    config = getattr(model, "config", None)
    lines = b"".join(f"{name}:{tuple(p.shape)}:{_sums(t)}\n".encode() for name, p, t in _parameters(model))
    if config is None or not hasattr(config, "to_json_string"):
        return {hashlib.sha256(lines).hexdigest()[:16]}
    current = getattr(config, "_name_or_path", "")
    out = set()
    try:
        for where in dict.fromkeys([current, *locations]):
            config._name_or_path = where
            h = hashlib.sha256(config.to_json_string(use_diff=False).encode())
            h.update(lines)
            out.add(h.hexdigest()[:16])
    finally:
        config._name_or_path = current
    return out


def _parameters(model: nn.Module):
    """``(name, parameter, value)`` of every parameter, the value read from accelerate's offload
    map when the parameter waits on the meta device."""
    for name, p in model.named_parameters():
        yield name, p, (offloaded_value(model, name) if p.device.type == "meta" else p).detach()


def _sums(t: torch.Tensor) -> str:
    t = t.double()
    return f"{t.sum().item():.10e}:{t.abs().sum().item():.10e}"


def offloaded_value(model: nn.Module, name: str):
    """The value of parameter ``name`` that accelerate offloaded (the parameter itself waits on the
    meta device): read from the weights map of the hook on its module or the nearest one above."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        module = model.get_submodule(".".join(parts[:cut])) if cut else model
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            weights = getattr(h, "weights_map", None)
            key = ".".join(parts[cut:])
            if weights is not None and key in weights:
                return weights[key]
    raise ValueError(f"parameter {name} is on the meta device and no offload hook holds its value")
