"""One forward helper for every way graftlens runs a model: plain, grafted, patched, knocked out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0..n-1 over each row's real tokens, so left and right padding give equal results."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def check_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, spans=None) -> None:
    """Raise `InterventionError` naming the argument unless ``input_ids`` is
    ``[batch, pos]``, ``attention_mask`` (if given) has its shape and ``spans`` (if given) one entry per prompt."""
    if input_ids.ndim != 2:
        raise InterventionError(f"input_ids must be [batch, pos], got shape {list(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise InterventionError(
            f"attention_mask {list(attention_mask.shape)} must have the shape of input_ids {list(input_ids.shape)}"
        )
    if spans is not None and len(spans) != input_ids.shape[0]:
        raise InterventionError(f"spans has {len(spans)} entries for a batch of {input_ids.shape[0]} prompts")


@checked
def run_logits(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    last_only: bool = False,
    grad: bool = False,
) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` (``[batch, 1, vocab]`` with ``last_only``) of one full-prompt
    forward pass, with position ids from the mask.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        input_ids: ``LongTensor[batch, pos]``, left-padded; or a `Prompts` (its mask fills
            ``attention_mask`` when unset), or text.
        attention_mask: ``[batch, pos]``, 1 on real tokens; None: no padding.
        last_only: compute the unembedding at the last position only (``[batch, 1, vocab]``).
        grad: keep the autograd graph, whatever the caller's grad mode (for learned masks and
            attribution methods); without it the pass runs under ``torch.no_grad()``.

    Examples:
        Left padding changes nothing:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> alone = graftlens.run_logits(m, torch.tensor([[5, 6, 7]]), last_only=True)
        >>> ids, mask = torch.tensor([[0, 5, 6, 7]]), torch.tensor([[0, 1, 1, 1]])
        >>> padded = graftlens.run_logits(m, ids, mask, last_only=True)
        >>> alone.shape, torch.allclose(alone, padded, atol=1e-5)
        (torch.Size([1, 1, 96]), True)
    """
    module = model.model if isinstance(model, LoadedModel) else model
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    extra = {"logits_to_keep": 1} if last_only else {}
    with torch.enable_grad() if grad else torch.no_grad():
        out = module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_for(attention_mask), **extra)
    return out.logits


def call_sequence(args: tuple, kwargs: dict, who: str) -> tuple[torch.Tensor, int, int]:
    """What a hook on a model's ``forward`` needs of the call: ``(attention mask, cached, new)``.

    The mask covers the whole sequence (``cached`` positions in the KV cache and the
    ``new`` ones of ``input_ids``/``inputs_embeds``); when the call gives none, every position is
    real. ``who`` names the caller in the error for a call without inputs."""
    inputs = kwargs.get("input_ids", args[0] if args else None)
    if inputs is None:
        inputs = kwargs.get("inputs_embeds")
        if inputs is None:
            raise InterventionError(f"{who} needs input_ids (or inputs_embeds) in the forward call")
    past = kwargs.get("cache", kwargs.get("past_key_values"))  # newer transformers name it ``cache``
    cached = int(past.get_seq_length()) if past is not None and hasattr(past, "get_seq_length") else 0
    new = int(inputs.shape[1])
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones((inputs.shape[0], cached + new), dtype=torch.long, device=inputs.device)
    return mask, cached, new


@contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Within the block no gradient accumulates in ``module``'s own weights (what trains through
    it, a mask or a lens, still gets its gradient); their flags are restored on exit."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
