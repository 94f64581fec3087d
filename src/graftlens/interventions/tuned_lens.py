"""The tuned lens (Belrose et al. 2023): per-depth affine translators before the unembedding.

The logit lens reads the residual stream after ``d`` layers as if it were the last layer's. A
tuned lens first maps it by an affine *translator* ``T_d(h) = h + W_d h + b_d``, trained so that
the projection's distribution matches the model's final one (KL from the final distribution,
`graftlens.train.tuned_lens`). The stream after the last layer needs no translator.

Which translator reads which point:

- ``resid_pre.ℓ`` is the stream after ``ℓ`` layers: ``T_ℓ``; ``resid_post.ℓ`` (= ``resid_pre.ℓ+1``)
  is after ``ℓ + 1`` layers: ``T_ℓ+1`` (none after the last layer);
- a sublayer output (``attn_out.ℓ``, ``mlp_out.ℓ``) is a term added to the stream that
  ``resid_post.ℓ`` sums; the translator is affine, so a term's share of ``T(resid_post.ℓ)`` is
  its linear part ``(I + W_ℓ+1) x`` (the bias belongs to the sum, not to any one term).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from graftlens.errors import InterventionError
from graftlens.interventions.hooks import PointLike
from graftlens.interventions.points import parse_point

WEIGHTS = "lens.safetensors"
MANIFEST = "manifest.json"


class TunedLensError(InterventionError):
    """A tuned lens does not fit the model, or a point it cannot read."""


class TunedLens(nn.Module):
    """Translators ``T_d`` for the stream after ``d = 0 .. n_layers - 1`` layers of a model of
    width ``d_model``. Each starts as the identity (``W_d = 0, b_d = 0``: the logit lens).

    Args:
        n_layers: the model's number of layers (one translator per depth).
        d_model: the width of the residual stream.

    Examples:
        >>> import torch
        >>> from graftlens.interventions.tuned_lens import TunedLens
        >>> lens = TunedLens(n_layers=4, d_model=8)
        >>> h = torch.randn(2, 8)
        >>> points = ("resid_post.1", "resid_post.3")
        >>> [torch.equal(lens.translate(h, point), h) for point in points]
        [True, True]
    """

    def __init__(self, n_layers: int, d_model: int):
        super().__init__()
        self.n_layers, self.d_model = n_layers, d_model
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        for t in self.translators:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)

    def depth(self, point: PointLike) -> tuple[int, bool]:
        """``(d, with_bias)``: the translator that reads ``point`` (``d == n_layers``: none), and
        whether its bias applies (not to a sublayer's term)."""
        p = parse_point(point)
        if p.per_head or p.name not in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
            raise TunedLensError(f"the tuned lens reads the residual stream and sublayer outputs, not {p}")
        if not 0 <= p.layer < self.n_layers:
            raise TunedLensError(f"point {p}: the lens has layers 0..{self.n_layers - 1}")
        if p.name == "resid_pre":
            return p.layer, True
        return p.layer + 1, p.name == "resid_post"

    def translate(self, hidden: torch.Tensor, point: PointLike) -> torch.Tensor:
        """``hidden[..., d_model]`` read at ``point``, translated into the last layer's basis."""
        d, with_bias = self.depth(point)
        if d == self.n_layers:
            return hidden
        t = self.translators[d]
        weight = t.weight.to(device=hidden.device, dtype=hidden.dtype)
        out = hidden + hidden @ weight.T
        return out + t.bias.to(device=hidden.device, dtype=hidden.dtype) if with_bias else out

    def translate_depth(self, hidden: torch.Tensor, d: int) -> torch.Tensor:
        """``hidden`` after ``d`` layers, translated (training reads depths, not points)."""
        return hidden if d == self.n_layers else hidden + self.translators[d](hidden)

    def save(self, directory: Path, manifest: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(directory / WEIGHTS))
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> TunedLens:
        manifest = json.loads((directory / MANIFEST).read_text())
        lens = cls(int(manifest["n_layers"]), int(manifest["d_model"]))
        lens.load_state_dict(load_file(str(directory / WEIGHTS)))
        lens.manifest = manifest
        return lens.requires_grad_(False)

    def check_fits(self, n_layers: int, d_model: int) -> None:
        if (n_layers, d_model) != (self.n_layers, self.d_model):
            raise TunedLensError(
                f"the tuned lens was trained for {self.n_layers} layers of width {self.d_model}; "
                f"the model has {n_layers} of width {d_model}"
            )
