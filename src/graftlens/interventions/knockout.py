"""Attention knockout (Geva et al.): block attention edges from target to source positions.

Which edges are blocked is said in prompt coordinates, like every position in graftlens: a
``sources`` and a ``targets`` selector (``"FE"``, ``"LT"``, ``"(FE+LT)^C"``, ...), resolved on each
forward call from that call's attention mask and the examples' ``spans``.

Blocking is done inside the model's own attention implementation: for the duration of a
`attention_knockout` block, the model's config names an attention function registered
through transformers' ``AttentionInterface`` that narrows the attention mask of the chosen
layers and then calls the implementation the model had (SDPA stays SDPA; a model loaded with
eager attention keeps its own eager function). Layers outside the knockout pass through
unchanged, so knocking out nothing reproduces the model bit for bit.

The block is scoped: the registration and the config's attention implementation are restored
when the outermost block on a model ends (the function is unregistered once no block uses it).
Blocks nest: inside another block, the edges of both are blocked.

**A query row whose every edge is blocked** (for example last → every position, the last one
included) would make softmax undefined: SDPA returns NaN and an additive mask turns it into
uniform attention over blocked positions. graftlens defines the result as *no attention*:
that query position's attention output is zero in every head of that layer (the output
projection then adds only its bias), and its attention weights, where returned, are zero.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from graftlens.errors import InterventionError, LayerSelectionError
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.run import call_sequence
from graftlens.positions import PositionsLike, Spans, resolve_positions

_PREFIX = "graftlens_knockout|"
_BLOCKED = "_graftlens_blocked_edges"


class KnockoutError(InterventionError):
    """A knockout does not fit the model or the batch it runs on."""


KNOCKOUT_ROWS_PER_PASS = 512  # rows of one pass of a knockout sweep's windows (prompts × windows)


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


def _knockout_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """The registered attention function: the model's own, with the edges of this layer narrowed."""
    implementation = module.config._attn_implementation.removeprefix(_PREFIX)
    inner = _inner_function(module, implementation)
    blocks = getattr(module, _BLOCKED, None)  # the active knockouts of this layer, innermost last
    edges = [b.edges for b in blocks or () if b.edges is not None]  # each BoolTensor[batch, pos, pos]
    if not edges:
        return inner(module, query, key, value, attention_mask, **kwargs)
    blocked = edges[0]
    for more in edges[1:]:
        if more.shape != blocked.shape:
            raise KnockoutError(f"nested knockout edges of shapes {list(blocked.shape)} and {list(more.shape)} differ")
        blocked = blocked | more
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


_REGISTERED: Counter[str] = Counter()  # knockout function name → blocks using it now


def _register(implementation: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = _PREFIX + implementation
    if _REGISTERED[name] == 0:
        ALL_ATTENTION_FUNCTIONS.register(name, _knockout_attention)
        # The same masks as the wrapped implementation builds (SDPA's may be None: causal fast path).
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[implementation])
    _REGISTERED[name] += 1
    return name


def _unregister(name: str) -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    _REGISTERED[name] -= 1
    if _REGISTERED[name] <= 0:
        del _REGISTERED[name]
        for registry in (ALL_ATTENTION_FUNCTIONS, ALL_MASK_ATTENTION_FUNCTIONS):
            registry._global_mapping.pop(name, None)  # what `register` wrote (a class-wide mapping)


def attention_module(loaded: LoadedModel, layer: int) -> nn.Module:
    """The attention module of ``layer``: the parent of its output projection."""
    o_path = loaded.adapter.sites("o", layer)[0].path
    return loaded.model.get_submodule(o_path.rsplit(".", 1)[0])


class _Block:
    """One active knockout: its edges for the current forward call."""

    def __init__(self, edges: torch.Tensor | None):
        self.edges = edges  # BoolTensor[batch, query, key] in padded coordinates, or None until resolved


@checked
@contextmanager
def attention_knockout(
    model: LoadedModel | nn.Module,
    layers: Iterable[int],
    sources: PositionsLike = None,
    targets: PositionsLike = "LT",
    *,
    spans: Sequence[Spans] | None = None,
    edges: torch.Tensor | None = None,
) -> Iterator[None]:
    """Block attention from ``targets`` to ``sources`` in every head of ``layers`` on each
    forward call inside the block.

    ``sources``/``targets`` are position selectors in prompt coordinates (``"FE"``, ``"LT"``, index
    lists, ...), resolved per call from its attention mask and ``spans``. ``edges``
    (``BoolTensor[batch, query, key]``, True = blocked, padded coordinates) may be given instead,
    for edges no pair of selectors describes. A window of layers per call, many at once:
    `knockout_sweep`.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        layers: the layers whose heads are knocked out (every head of each).
        sources: the positions attended to that are blocked, a selector in prompt coordinates
            (``"FE"``, ``"LT"``, ``"(FE+LT)^C"``, index lists); None: every position.
        targets: the positions whose attention to ``sources`` is blocked (default ``"LT"``).
        spans: per example, the named spans (``FE``, ``subject``, ...) the position selectors name.
        edges: ``BoolTensor[batch, query, key]`` (True = blocked, padded coordinates), instead of
            ``sources``/``targets``, for edges no pair of selectors describes.

    Examples:
        Knocking out nothing is the model, bit for bit:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> with graftlens.attention_knockout(m, [1, 2], sources="0,1", targets="LT"):
        ...     knocked = graftlens.run_logits(m, ids)
        >>> with graftlens.attention_knockout(m, [], sources="0,1", targets="LT"):
        ...     nothing = graftlens.run_logits(m, ids)
        >>> torch.equal(nothing, graftlens.run_logits(m, ids)), torch.equal(knocked, nothing)
        (True, False)
    """
    loaded = as_loaded(model)
    layers = sorted(set(int(layer) for layer in layers))
    n = loaded.adapter.n_layers
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise LayerSelectionError(f"knockout layers {bad} out of range (the model has layers 0..{n - 1})")
    if (sources is None) == (edges is None):
        raise KnockoutError("attention_knockout needs either sources (a position selector) or edges, not both")
    if edges is not None and (edges.dtype != torch.bool or edges.dim() != 3 or edges.shape[1] != edges.shape[2]):
        raise KnockoutError(f"knockout edges must be a BoolTensor[batch, pos, pos], got {edges.dtype} {list(edges.shape)}")
    config = loaded.model.config
    previous = config._attn_implementation
    if previous is None:
        raise KnockoutError("attention knockout needs a model with a set attention implementation")
    modules = [attention_module(loaded, layer) for layer in layers]
    block = _Block(edges)

    def resolve(module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask, _, _ = call_sequence(args, kwargs, "attention knockout")
        block.edges = knockout_edges(resolve_positions(sources, mask, spans), resolve_positions(targets, mask, spans))

    outermost = not previous.startswith(_PREFIX)
    name = _register(previous) if outermost else previous
    hook = loaded.model.register_forward_pre_hook(resolve, with_kwargs=True) if sources is not None else None
    config._attn_implementation = name
    try:
        for m in modules:
            m.__dict__.setdefault(_BLOCKED, []).append(block)
        yield
    finally:
        for m in modules:
            active = m.__dict__.get(_BLOCKED, [])
            if block in active:
                active.remove(block)
            if not active:
                m.__dict__.pop(_BLOCKED, None)
        if hook is not None:
            hook.remove()
        if outermost:
            config._attn_implementation = previous
            _unregister(name)
