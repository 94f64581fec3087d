"""The model pair the grafting benchmarks time: the embedded model, and a copy of it with every
weight moved by Gaussian noise of scale 1e-3 (seed 0), standing in for a finetuned model (a
donor equal to the base would let shortcuts go unnoticed)."""

from __future__ import annotations

import torch

import graftlens


def embedded_pair(device: str = "cpu", dtype: torch.dtype | None = None) -> tuple[graftlens.LoadedModel, graftlens.LoadedModel]:
    """``(base, donor)``; the noise is drawn on the CPU, so the donor is the same on any device."""
    base = graftlens.load_model("smollm2-135m", dtype=dtype, device=device)
    donor = graftlens.load_model("smollm2-135m", dtype=dtype, device=device)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in donor.model.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.device, p.dtype) * 1e-3)
    return base, donor
