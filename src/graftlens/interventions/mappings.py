"""Subject → attribute mappings stored in attention heads (Geva et al.).

An attention head adds to the residual stream ``W_O^h · v^h(source)`` weighted by its attention:
when a head attends only to the subject's last token, its whole contribution is its
*value–output map* applied there. Geva et al. project that contribution to the vocabulary and
find, for many extraction events, heads whose top tokens hold the predicted attribute — even
when the map is applied to the subject token's embedding, so the mapping sits in the head's
parameters.

`head_mapping_vectors` computes ``W_O^h · v^h(x)`` for every head of the chosen layers, at
one position per prompt, for two representations ``x`` of that position:

- ``"hidden"``: the residual stream entering the layer (what the head reads there in the run);
- ``"embedding"``: the position's input embedding (the residual stream entering layer 0; in
  families with learned absolute positions, GPT-2, it holds the position embedding too).

Values come from the model's own modules through the hook points (fused and interleaved q/k/v
projections included, biases included); the output projection's bias is shared by all heads and
is left out. Under grouped-query attention query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)``
(transformers' ``repeat_kv``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from graftlens.errors import InterventionError, LayerSelectionError
from graftlens.interventions.hooks import capture, edit
from graftlens.interventions.lens import last_index
from graftlens.interventions.points import hook_site, parse_point
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.run import run_logits
from graftlens.positions import PositionsLike, Spans, resolve_positions

Source = Literal["hidden", "embedding"]
SOURCES: tuple[str, ...] = ("hidden", "embedding")


class MappingError(InterventionError):
    """A head mapping names an unknown source or a layer out of range."""


def kv_head_of(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The KV head query head ``head`` reads (consecutive query heads share one KV head)."""
    return head // (n_heads // n_kv_heads)


def value_output(loaded: LoadedModel, layer: int, v: torch.Tensor) -> torch.Tensor:
    """``W_O^h · v^h`` of every query head of ``layer``: ``[..., n_heads, d_model]`` from the values
    ``v[..., n_kv_heads, d_head]`` (as the hook point ``v`` holds them)."""
    a = loaded.adapter
    kv = torch.tensor([kv_head_of(h, a.n_heads, a.n_kv_heads) for h in range(a.n_heads)], device=v.device)
    per_head = v.index_select(-2, kv)  # [..., n_heads, d_head]: each query head's values
    eye = torch.eye(a.n_heads, dtype=v.dtype, device=v.device)  # one head's slot filled per row
    z = (eye[:, :, None] * per_head[..., None, :, :]).flatten(-2)  # [..., n_heads, n_heads * d_head]
    site = hook_site(a, parse_point(f"z.{layer}"))
    o_proj = loaded.model.get_submodule(site.path)
    bias = o_proj(torch.zeros_like(z[..., :1, :]))  # [..., 1, d_model]: what every head shares
    return o_proj(z) - bias


@checked
def head_mapping_vectors(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: Iterable[int],
    positions: PositionsLike = "subject",
    source: str = "hidden",
    *,
    spans: Sequence[Spans] | None = None,
) -> torch.Tensor:
    """``[batch, len(layers), n_heads, d_model]``: each head's value–output map applied to the
    ``source`` representation of the last position ``positions`` picks in each prompt:
    ``"hidden"`` (the stream entering the layer) or ``"embedding"`` (the token's embedding).

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        input_ids: ``LongTensor[batch, pos]``, left-padded; or a `Prompts` (its mask and spans
            fill the arguments left unset), or text.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding.
        layers: the layers whose heads are applied.
        positions: a selector in prompt coordinates (``"FE"``, ``"LT"``, ``"(FE+LT)^C"``, index
            lists); each prompt is read at the last position it picks.
        source: ``"hidden"`` (the stream entering the layer) or ``"embedding"`` (the token's
            embedding).
        spans: per example, the named spans (``FE``, ``subject``, ...) the position selectors name.

    Examples:
        Project the maps to the vocabulary to read what each head writes:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids, spans = torch.tensor([[5, 6, 7, 8]]), [{"subject": (1, 3)}]
        >>> maps = graftlens.head_mapping_vectors
        >>> vectors = maps(m, ids, None, [2, 3], "subject", spans=spans)
        >>> vectors.shape, graftlens.project(m, vectors).topk(5).indices.shape
        (torch.Size([1, 2, 4, 32]), torch.Size([1, 2, 4, 5]))
    """
    loaded = as_loaded(model)
    if source not in SOURCES:
        raise MappingError(f"unknown mapping source {source!r}; choose from: {', '.join(SOURCES)}")
    layers = [int(layer) for layer in layers]
    n = loaded.adapter.n_layers
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise LayerSelectionError(f"head-mapping layers {bad} out of range (the model has layers 0..{n - 1})")
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    where = last_index(resolve_positions(positions, mask, spans)).to(input_ids.device)  # [batch]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    values = [f"v.{layer}" for layer in layers]
    if source == "hidden":
        with capture(loaded, values) as cache:
            run_logits(loaded, input_ids, attention_mask, last_only=True)
    else:
        with capture(loaded, ["resid_pre.0"]) as first:
            run_logits(loaded, input_ids, attention_mask, last_only=True)
        embedded = first["resid_pre.0"][rows, where]  # [batch, d_model]

        def put_embedding(x: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model]
            x = x.clone()
            x[rows, where] = embedded.to(x.dtype)
            return x

        # A head's value at a position depends on the stream entering its layer there alone, so
        # one pass with the embedding written into every chosen layer gives every layer's values.
        with edit(loaded, {f"resid_pre.{layer}": put_embedding for layer in layers}), capture(loaded, values) as cache:
            run_logits(loaded, input_ids, attention_mask, last_only=True)
    with torch.no_grad():
        out = [value_output(loaded, layer, cache[v][rows, where]) for layer, v in zip(layers, values)]  # each [batch, heads, d]
    return torch.stack(out, 1)
