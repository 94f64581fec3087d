"""Run a batch's first columns once with a KV cache, then continue only the columns after them.

Interventions that change nothing before some column (a graft of the last token, a path-patched
sender at the query label) need not recompute what comes before it: every configuration continues
the same cached prefix. `continue_prefix` leaves the cache as it found it, so one prefix
serves many continuations.
"""

from __future__ import annotations

import copy
import inspect

import torch

from graftlens.models.loading import LoadedModel
from graftlens.models.run import position_ids_for

VARIANT_ROWS = 256  # rows of one pass that runs configurations as variants (prompts × configurations)


def cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def copied_cache(cache, keep: int | None = None, repeat: int = 1):
    """A deep copy of ``cache`` holding its first ``keep`` columns (all of them when None), each row
    ``repeat`` times in a row (row ``b`` of copy ``v`` at ``b * repeat + v``)."""
    work = copy.deepcopy(cache)
    length = int(work.get_seq_length())
    if keep is not None and keep < length:
        work.crop(keep - length)  # drop the columns from `keep` on
    if repeat > 1:
        work.batch_repeat_interleave(repeat)
    return work


def keeps_every_position(cache, length: int, more: int) -> bool:
    """Can the cache drop ``more`` appended tokens again (a sliding-window layer may have evicted some)?"""
    for layer in getattr(cache, "layers", []):
        window = getattr(layer, "sliding_window", None)
        if window is not None and length + more > window - 1:
            return False
    return True


def cache_argument(model: LoadedModel) -> str:
    """The name of a forward's KV-cache argument: ``cache`` in newer transformers (which warn about
    ``past_key_values``), ``past_key_values`` before."""

    return "cache" if "cache" in inspect.signature(model.model.forward).parameters else "past_key_values"


def run_prefix(model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, cut: int):
    """The KV cache of ``model``'s plain forward over columns ``[0, cut)`` of a left-padded batch."""
    from transformers import DynamicCache

    if not 0 < cut < input_ids.shape[1]:
        raise ValueError(f"a prefix cut at column {cut} of a {input_ids.shape[1]}-column batch leaves nothing to share")
    cache = DynamicCache(config=model.model.config)
    with torch.no_grad():
        model.model(
            input_ids=input_ids[:, :cut],
            attention_mask=attention_mask[:, :cut],
            position_ids=position_ids_for(attention_mask)[:, :cut],
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(model): cache},
        )
    return cache


def continue_prefix(
    model: LoadedModel, cache, input_ids: torch.Tensor, attention_mask: torch.Tensor, grad: bool = False
) -> torch.Tensor:
    """Logits ``[batch, vocab]`` of the last column, computing only the columns after the cached
    prefix (hooks and grafts active around the call see only those columns); the cache is left as
    it was. With ``grad`` the logits keep the graph of those columns (the prefix is constant)."""
    return continue_and_force(model, cache, input_ids, attention_mask, grad=grad)[0]


def continue_and_force(
    model: LoadedModel,
    cache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    forced_ids: torch.Tensor | None = None,
    forced_mask: torch.Tensor | None = None,
    grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits [batch, vocab] of the last column, logits [batch, more, vocab] of the forced columns)``.

    The columns after ``cache`` (``None``: from the first) are computed as `continue_prefix`
    does, the same call whether or not tokens are forced after them, so the last column's logits do
    not depend on what follows. ``forced_ids``/``forced_mask`` (the inputs with ``more`` columns
    appended, a teacher-forced target) then continue from there in a second call; ``None`` for the
    second part without them. The cache is left as it was."""
    from transformers import DynamicCache

    fresh = cache is None
    if fresh:
        cache = DynamicCache(config=model.model.config)
    length = int(cache.get_seq_length())
    width = input_ids.shape[1]
    more = 0 if forced_ids is None else forced_ids.shape[1] - width
    # A pass with gradients keeps the tensors the cache appends in its graph: it works on a copy, so
    # the shared prefix never holds a view into a graph that a backward pass frees.
    reusable = fresh or (keeps_every_position(cache, length, width - length + more) and not grad)
    work = cache if reusable else copy.deepcopy(cache)
    argument = {cache_argument(model): work}
    try:
        with torch.enable_grad() if grad else torch.no_grad():
            last = model.model(
                input_ids=input_ids[:, length:],
                attention_mask=attention_mask,
                position_ids=position_ids_for(attention_mask)[:, length:],
                use_cache=True,
                logits_to_keep=1,
                **argument,
            ).logits[:, -1]
            forced = None
            if more:
                assert forced_ids is not None and forced_mask is not None
                forced = model.model(
                    input_ids=forced_ids[:, width:],
                    attention_mask=forced_mask,
                    position_ids=position_ids_for(forced_mask)[:, width:],
                    use_cache=True,
                    **argument,
                ).logits
    finally:
        if reusable and not fresh and cache.get_seq_length() > length:
            cache.crop(length - int(cache.get_seq_length()))  # drop what this call appended
    return last, forced
