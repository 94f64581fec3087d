"""A cheap, exact-enough identity of a model's weights, for naming finetuned checkpoints."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """Hash of the architecture config and, per parameter, its name, shape and two float64 sums.

    Two models with the same fingerprint have the same config and (up to an astronomically
    unlikely coincidence of sums) the same weights; it costs one pass over the parameters."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode() if hasattr(config, "to_json_string") else b"")
    for name, p in model.named_parameters():
        t = (offloaded_value(model, name) if p.device.type == "meta" else p).detach().double()
        h.update(f"{name}:{tuple(p.shape)}:{t.sum().item():.10e}:{t.abs().sum().item():.10e}\n".encode())
    return h.hexdigest()[:16]


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
