"""Attention knockout (Geva et al.): block attention edges from target to source positions.

Blocking is done inside the model's own attention implementation: for the duration of a
:func:`attention_knockout` block, the model's config names an attention function registered
through transformers' ``AttentionInterface`` that narrows the attention mask of the chosen
layers and then calls the implementation the model had (SDPA stays SDPA; a model loaded with
eager attention keeps its own eager function). Layers outside the knockout pass through
unchanged, so knocking out nothing reproduces the model bit for bit.

**A query row whose every edge is blocked** (for example last → every position, the last one
included) would make softmax undefined: SDPA returns NaN and an additive mask turns it into
uniform attention over blocked positions. graftlens defines the result as *no attention*:
that query position's attention output is zero in every head of that layer (the output
projection then adds only its bias), and its attention weights, where returned, are zero.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from graftlens.errors import GraftlensError, LayerSelectionError
from graftlens.models.loading import LoadedModel, as_loaded

_PREFIX = "graftlens_knockout|"
_BLOCKED = "_graftlens_blocked_edges"


class KnockoutError(GraftlensError):
    """A knockout does not fit the model or the batch it runs on."""


def knockout_edges(sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``BoolTensor[batch, query, key]``: the edges from each target position to each source position.

    ``sources`` and ``targets`` are ``BoolTensor[batch, pos]`` (e.g. from ``resolve_positions``)."""
    if sources.shape != targets.shape:
        raise KnockoutError(f"sources {list(sources.shape)} and targets {list(targets.shape)} must have the same shape")
    return targets[:, :, None] & sources[:, None, :]


def _inner_function(module: nn.Module, implementation: str) -> Callable[..., Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if implementation == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise KnockoutError(f"{type(module).__name__} has no eager attention function to delegate to")
        return eager
    return ALL_ATTENTION_FUNCTIONS[implementation]


def _allowed(mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """The edges the model's own mask allows, as ``BoolTensor[batch|1, 1, query, key]``."""
    if mask is None:  # SDPA's causal fast path: no padding, no window
        q = torch.arange(kv_len - q_len, kv_len, device=device)
        return (q[:, None] >= torch.arange(kv_len, device=device)[None, :])[None, None]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2  # additive masks hold 0 (allowed) or the dtype's minimum


def _knockout_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """The registered attention function: the model's own, with the edges of this layer narrowed."""
    implementation = module.config._attn_implementation.removeprefix(_PREFIX)
    inner = _inner_function(module, implementation)
    blocked = getattr(module, _BLOCKED, None)  # BoolTensor[batch, pos, pos] or None
    if blocked is None:
        return inner(module, query, key, value, attention_mask, **kwargs)
    q_len, kv_len = query.shape[2], key.shape[2]
    if blocked.shape[0] != query.shape[0] or blocked.shape[1] < q_len or blocked.shape[2] < kv_len:
        raise KnockoutError(
            f"knockout edges of shape {list(blocked.shape)} do not fit a batch of {query.shape[0]} with "
            f"{q_len} queries and {kv_len} keys"
        )
    blocked = blocked[:, -q_len:, -kv_len:].to(query.device)[:, None]  # [batch, 1, query, key]
    allowed = _allowed(attention_mask, q_len, kv_len, query.device)  # [batch|1, 1, query, key]
    narrowed = allowed & ~blocked
    emptied = allowed.any(-1) & ~narrowed.any(-1)  # [batch, 1, query]: rows the knockout left with no edge
    narrowed = torch.where(emptied[..., None], allowed, narrowed)  # computed normally, zeroed below
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        new_mask = torch.zeros(narrowed.shape, dtype=attention_mask.dtype, device=query.device)
        new_mask = new_mask.masked_fill(~narrowed, torch.finfo(attention_mask.dtype).min)
    else:
        new_mask = narrowed
    out, weights = inner(module, query, key, value, new_mask, **kwargs)  # out: [batch, query, head, d_head]
    out = out.masked_fill(emptied[:, 0, :, None, None], 0.0)
    if weights is not None:  # [batch, head, query, key]
        weights = weights.masked_fill(emptied[..., None], 0.0)
    return out, weights


def _register(implementation: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = _PREFIX + implementation
    if name not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(name, _knockout_attention)
        # The same masks as the wrapped implementation builds (SDPA's may be None: causal fast path).
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[implementation])
    return name


def attention_module(loaded: LoadedModel, layer: int) -> nn.Module:
    """The attention module of ``layer``: the parent of its output projection."""
    o_path = loaded.adapter.sites("o", layer)[0].path
    return loaded.model.get_submodule(o_path.rsplit(".", 1)[0])


@contextmanager
def attention_knockout(model: LoadedModel | nn.Module, edges: torch.Tensor, layers: Iterable[int]) -> Iterator[None]:
    """Block ``edges`` (``BoolTensor[batch, query, key]``, True = blocked, padded coordinates) in
    every head of ``layers`` on each forward call inside the block."""
    loaded = as_loaded(model)
    layers = sorted(set(int(layer) for layer in layers))
    n = loaded.adapter.n_layers
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise LayerSelectionError(f"knockout layers {bad} out of range (the model has layers 0..{n - 1})")
    if edges.dtype != torch.bool or edges.dim() != 3 or edges.shape[1] != edges.shape[2]:
        raise KnockoutError(f"knockout edges must be a BoolTensor[batch, pos, pos], got {edges.dtype} {list(edges.shape)}")
    config = loaded.model.config
    previous = config._attn_implementation
    if previous is None or previous.startswith(_PREFIX):
        raise KnockoutError("attention knockouts cannot be nested, and need a model with a set attention implementation")
    modules = [attention_module(loaded, layer) for layer in layers]
    config._attn_implementation = _register(previous)
    try:
        for m in modules:
            setattr(m, _BLOCKED, edges)
        yield
    finally:
        for m in modules:
            if hasattr(m, _BLOCKED):
                delattr(m, _BLOCKED)
        config._attn_implementation = previous
