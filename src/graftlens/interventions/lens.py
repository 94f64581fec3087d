"""Vocabulary projection: read an intermediate activation as next-token logits.

``project`` applies the model's final norm (optionally) and its unembedding to any
``[..., d_model]`` activation: a residual stream (the logit lens), or a sublayer output.
Geva et al. use it two ways, both built from `point_logits`:

- **attribute rate**: project the residual stream at a position (the subject's last token)
  after each layer; how often is the fact's answer among the top-k tokens?
- **extraction events**: project the attention and MLP sublayer outputs at the last position;
  an event is a sublayer whose top-1 token is the answer.

Gemma's final logit soft-capping is not applied: it is monotonic, so ranks are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from graftlens.errors import UnknownComponentError
from graftlens.interventions.hooks import PointLike, capture
from graftlens.interventions.points import parse_point
from graftlens.interventions.tuned_lens import TunedLens, TunedLensError
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.run import run_logits
from graftlens.positions import PositionsLike, Spans, resolve_positions


def final_norm(loaded: LoadedModel) -> nn.Module:
    """The norm applied before the unembedding (present even where it has no weights)."""
    try:
        path = loaded.adapter.sites("ln_final")[0].path
    except UnknownComponentError:  # a norm without parameters (OLMo-1) is not a graftable site
        path = loaded.adapter.family.model_wide["ln_final"][0].rstrip("?")
    return loaded.model.get_submodule(path)


@checked
def project(
    model: LoadedModel | nn.Module, hidden: torch.Tensor, use_final_norm: bool = True, grad: bool = False
) -> torch.Tensor:
    """Logits ``[..., vocab]`` of an activation ``hidden[..., d_model]``: the final norm (unless
    ``use_final_norm`` is False) and the unembedding (with ``grad``, keeping the graph).

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        hidden: ``[..., d_model]`` activations of the residual stream.
        use_final_norm: apply the final norm before the unembedding (the logit lens does).
        grad: keep the autograd graph (for gradients through the result).

    Examples:
        The last layer's stream, projected, is the model's logits:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7]])
        >>> logits, cache = graftlens.run_with_cache(m, ids, None, ["resid_post.3"])
        >>> torch.allclose(graftlens.project(m, cache["resid_post.3"]), logits, atol=1e-5)
        True
    """
    loaded = as_loaded(model)
    with torch.enable_grad() if grad else torch.no_grad():
        if use_final_norm:
            hidden = final_norm(loaded)(hidden)
        return loaded.model.get_output_embeddings()(hidden)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """``LongTensor[batch]``: the last True position of each row of ``mask[batch, pos]``."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, pos, -1).max(-1).values


def at_last_picked(
    hidden: torch.Tensor, positions: PositionsLike, attention_mask: torch.Tensor, spans: Sequence[Spans] | None = None
) -> torch.Tensor:
    """``hidden[batch, pos, ...]`` at the last position ``positions`` picks in each row: ``[batch, ...]``."""
    where = last_index(resolve_positions(positions, attention_mask, spans)).to(hidden.device)  # [batch], padded
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), where]


@checked
def point_logits(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    points: list[PointLike],
    positions: PositionsLike = "LT",
    use_final_norm: bool = True,
    *,
    spans: Sequence[Spans] | None = None,
    grad: bool = False,
    lens: TunedLens | None = None,
) -> dict[str, torch.Tensor]:
    """Projected logits of each stream point at one position per example, from one forward pass.

    ``positions`` is a selector in prompt coordinates (``"LT"``, ``"subject"``, per-example index
    lists, ...); each example is read at the *last* position it picks (e.g. the subject's last
    token). Returns point name (``"attn_out.4"``) → ``[batch, vocab]``. With ``lens`` (a
    `TunedLens`), each point is translated by its
    translator before the final norm and the unembedding.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        input_ids: ``LongTensor[batch, pos]``, left-padded; or a `Prompts` (its mask and spans
            fill the arguments left unset), or text.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding.
        points: stream points to project (``"resid_post.4"``, ``"attn_out.4"``, `Point` objects).
        positions: a selector in prompt coordinates (``"FE"``, ``"LT"``, ``"(FE+LT)^C"``, index
            lists); each prompt is read at the last position it picks.
        use_final_norm: apply the final norm before the unembedding.
        spans: per example, the named spans (``FE``, ``subject``, ...) the position selectors name.
        grad: keep the autograd graph (for gradients through the result).
        lens: a `TunedLens` whose translators map each point first (None: the logit lens).

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7]])
        >>> out = graftlens.point_logits(m, ids, None, ["attn_out.1", "resid_post.2"], "LT")
        >>> {name: tuple(t.shape) for name, t in out.items()}
        {'attn_out.1': (1, 96), 'resid_post.2': (1, 96)}
    """
    loaded = as_loaded(model)
    parsed = [parse_point(p) for p in points]
    for p in parsed:
        if p.per_head:
            raise UnknownComponentError(f"vocabulary projection reads stream points (resid, attn_out, mlp_out), not {p}")
    if lens is not None and not isinstance(lens, TunedLens):
        raise TunedLensError(f"point_logits: lens must be a TunedLens (graftlens.tuned_lens(model)), not {lens!r}")
    if lens is not None:
        lens.check_fits(loaded.adapter.n_layers, loaded.adapter.dims.d_model)
        if not use_final_norm:
            raise TunedLensError("a tuned lens reads through the final norm (it was trained so): keep use_final_norm")
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    where = last_index(resolve_positions(positions, mask, spans))  # [batch], padded indices
    with capture(loaded, parsed, keep_graph=grad) as cache:
        run_logits(loaded, input_ids, attention_mask, last_only=True, grad=grad)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    out = {}
    for p in parsed:
        hidden = cache[p][rows, where.to(input_ids.device)]  # [batch, d_model]
        out[str(p)] = project(loaded, hidden if lens is None else lens.translate(hidden, p), use_final_norm, grad)
    return out
