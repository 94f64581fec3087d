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
        t = p.detach().double()
        h.update(f"{name}:{tuple(p.shape)}:{t.sum().item():.10e}:{t.abs().sum().item():.10e}\n".encode())
    return h.hexdigest()[:16]
