"""Hook points: named activations of a model, resolved to one module input or output each.

A point is ``name.layer`` (``z.5``, ``resid_pre.0``). The names, one vocabulary for every family:

| name | what it holds | shape |
|---|---|---|
| ``resid_pre`` | the residual stream entering layer ``l`` | ``[batch, pos, d_model]`` |
| ``resid_post`` | the residual stream leaving layer ``l`` | ``[batch, pos, d_model]`` |
| ``attn_out`` | the attention sublayer's output (the output projection's output) | ``[batch, pos, d_model]`` |
| ``mlp_out`` | the MLP sublayer's output (the down projection's output) | ``[batch, pos, d_model]`` |
| ``z`` | per-head outputs: the input of the output projection | ``[batch, pos, head, d_head]`` |
| ``q`` ``k`` ``v`` | per-head projections, before rotary embeddings and q/k norms | ``[batch, pos, head, d_head]`` |

``k`` and ``v`` have ``n_kv_heads`` heads (fewer than ``q`` under grouped-query attention).
Points are hooked at module level (projections, decoder layers), so fused projections
(GPT-2's ``c_attn``, GPT-NeoX's per-head interleaved ``query_key_value``, Phi-3's
``qkv_proj``) expose q, k, v through the adapter's row intervals, and the decoder layers'
output format (tuple or tensor, by transformers version) does not matter.

TransformerLens names are accepted as aliases wherever a point is named:
``blocks.{l}.hook_resid_pre``, ``blocks.{l}.hook_resid_post``, ``blocks.{l}.hook_attn_out``,
``blocks.{l}.hook_mlp_out``, ``blocks.{l}.attn.hook_z`` (and ``hook_q``/``hook_k``/``hook_v``):
each means the graftlens point of the same name (see `TL_ALIASES`).

In families with a norm after each sublayer (Gemma-2, OLMo-2), ``attn_out``/``mlp_out`` are
the projections' outputs before that norm: the residual stream receives their normed version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from graftlens.errors import InterventionError, LayerSelectionError

if TYPE_CHECKING:  # point names are checked when recipes are read, without torch
    import torch

    from graftlens.models.adapters import ArchitectureAdapter

HEAD_POINTS = ("z", "q", "k", "v")
STREAM_POINTS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
POINT_NAMES = STREAM_POINTS + HEAD_POINTS


class PointError(InterventionError):
    """A hook point name is unknown or its layer is out of range."""


@dataclass(frozen=True, order=True)
class Point:
    """One named activation of one layer (``Point("z", 5)``, written ``z.5``).

    Names: ``resid_pre``, ``resid_post``, ``attn_out``, ``mlp_out`` (``[batch, pos, d_model]``),
    and per head ``z``, ``q``, ``k``, ``v`` (``[batch, pos, head, d_head]``).

    Args:
        name: ``resid_pre``, ``resid_post``, ``attn_out``, ``mlp_out``, or a per-head ``z``, ``q``,
            ``k``, ``v``.
        layer: the layer, from 0.

    Examples:
        >>> from graftlens import Point
        >>> from graftlens.interventions import parse_point
        >>> parse_point("z.5") == Point("z", 5) == parse_point("blocks.5.attn.hook_z")
        True
    """

    name: str
    layer: int

    def __post_init__(self) -> None:
        if self.name not in POINT_NAMES:
            raise PointError(f"unknown hook point {self.name!r}; known: {', '.join(POINT_NAMES)}")

    def __str__(self) -> str:
        return f"{self.name}.{self.layer}"

    @property
    def per_head(self) -> bool:
        return self.name in HEAD_POINTS


TL_ALIASES = {
    "blocks.{l}.hook_resid_pre": "resid_pre",
    "blocks.{l}.hook_resid_post": "resid_post",
    "blocks.{l}.hook_attn_out": "attn_out",
    "blocks.{l}.hook_mlp_out": "mlp_out",
    "blocks.{l}.attn.hook_z": "z",
    "blocks.{l}.attn.hook_q": "q",
    "blocks.{l}.attn.hook_k": "k",
    "blocks.{l}.attn.hook_v": "v",
}
"""TransformerLens hook names → graftlens point names (``{l}`` is the layer)."""

_TL_PATTERN = re.compile(r"blocks\.(\d+)\.((?:attn\.)?hook_[a-z_]+)")
_TL_BY_SUFFIX = {alias.removeprefix("blocks.{l}."): name for alias, name in TL_ALIASES.items()}


def parse_point(text: str | Point) -> Point:
    """``"z.5"`` or its TransformerLens alias ``"blocks.5.attn.hook_z"`` → ``Point("z", 5)``."""
    if isinstance(text, Point):
        return text
    stripped = str(text).strip()
    tl = _TL_PATTERN.fullmatch(stripped)
    if tl is not None:
        name = _TL_BY_SUFFIX.get(tl.group(2))
        if name is None:
            known = ", ".join(TL_ALIASES)
            raise PointError(f"TransformerLens hook {text!r} has no graftlens point; the aliases are: {known}")
        return Point(name, int(tl.group(1)))
    m = re.fullmatch(r"([a-z_]+)\.(\d+)", stripped)
    if m is None:
        raise PointError(
            f"hook point {text!r} is not of the form NAME.LAYER (e.g. 'z.5') or a TransformerLens name "
            f"(e.g. 'blocks.5.attn.hook_z'); names: {', '.join(POINT_NAMES)}"
        )
    return Point(m.group(1), int(m.group(2)))


@dataclass(frozen=True)
class HookSite:
    """Where a point lives: the input (``side="in"``) or output of module ``path``.

    ``rows`` picks output features of a fused projection; ``heads`` views the features as
    ``[..., heads, d_head]``."""

    path: str
    side: str  # "in" | "out"
    rows: torch.Tensor | None = None  # LongTensor[n_features]
    heads: int | None = None
    d_head: int | None = None

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """The point's activation from the module's input/output tensor ``x[batch, pos, features]``."""
        if self.rows is not None:
            x = x.index_select(-1, self.rows.to(x.device))
        if self.heads is not None:
            x = x.unflatten(-1, (self.heads, self.d_head))  # [batch, pos, head, d_head]
        return x

    def write(self, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``x`` with the point's features replaced by ``value`` (the shape `read` gives)."""
        if self.heads is not None:
            value = value.flatten(-2)
        if self.rows is None:
            return value.to(x.dtype).contiguous()  # an edit may return a broadcast view
        out = x.clone()
        out[..., self.rows.to(x.device)] = value.to(x.dtype)
        return out


def hook_site(adapter: ArchitectureAdapter, point: Point) -> HookSite:
    """Resolve ``point`` on a model through its adapter."""
    n = adapter.n_layers
    if not 0 <= point.layer < n:
        raise LayerSelectionError(f"hook point {point}: layer {point.layer} out of range (the model has layers 0..{n - 1})")
    name, layer = point.name, point.layer
    if name == "resid_pre":
        return HookSite(f"{adapter.family.layers}.{layer}", "in")
    if name == "resid_post":
        return HookSite(f"{adapter.family.layers}.{layer}", "out")
    if name == "attn_out":
        return HookSite(adapter.sites("o", layer)[0].path, "out")
    if name == "mlp_out":
        return HookSite(adapter.sites("down", layer)[0].path, "out")
    if name == "z":
        return HookSite(adapter.sites("o", layer)[0].path, "in", heads=adapter.n_heads, d_head=adapter.d_head)
    projection = adapter.sites(name, layer)[0]  # q_proj, not the q_norm that may follow it
    heads = adapter.n_heads if name == "q" else adapter.n_kv_heads
    return HookSite(projection.path, "out", projection.row_index(), heads, adapter.d_head)
