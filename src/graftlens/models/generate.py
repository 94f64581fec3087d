"""Greedy continuation of left-padded prompts, one token per forward call, with a KV cache.

Each call is an ordinary forward of the model, so whatever intervention is active around it
(a grafter, hooks, knockouts) acts on every generated token as on the prompt; a grafter
re-resolves its rules at each call, so ``LT`` follows the newest token as a token-by-token loop
does. No sampling, no stopping criteria beyond ``n_new`` tokens: the same prompts give the same
tokens on every run.
"""

from __future__ import annotations

import torch

from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.prefix import cache_argument
from graftlens.models.run import position_ids_for


@torch.no_grad()
def greedy_continuation(
    model: LoadedModel | torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_new: int, cache=None
) -> torch.Tensor:
    """``LongTensor[batch, n_new]``: the argmax token after each prompt, then after each token chosen.

    ``cache``: a KV cache of the prompts' first columns (a shared plain prefix) to continue instead
    of computing them; it is extended in place, so pass a copy that may be consumed."""
    from transformers import DynamicCache

    loaded = as_loaded(model)
    if cache is None:
        cache = DynamicCache(config=loaded.model.config)
    length = int(cache.get_seq_length())
    cache_arg = {cache_argument(loaded): cache}
    mask = attention_mask
    step_ids, step_positions = input_ids[:, length:], position_ids_for(mask)[:, length:]
    chosen = []
    for _ in range(n_new):
        logits = loaded.model(
            input_ids=step_ids, attention_mask=mask, position_ids=step_positions, use_cache=True, logits_to_keep=1, **cache_arg
        ).logits
        token = logits[:, -1].argmax(-1, keepdim=True)  # [batch, 1]
        chosen.append(token)
        step_positions = step_positions[:, -1:] + 1
        step_ids = token
        mask = torch.cat([mask, torch.ones_like(token, dtype=mask.dtype)], 1)
    return torch.cat(chosen, 1) if chosen else input_ids.new_zeros((input_ids.shape[0], 0))
