"""Shared prefixes: compute the recipient's own positions once, graft only the last one.

A configuration whose rules claim only each prompt's last token (component sweeps at LT, the
paper's Figure 4) leaves every earlier position the recipient's own computation, the same for
every such configuration. So the prompts' prefixes (all but the last column of a left-padded
batch) are run once with a KV cache, and each configuration continues that cache for the last
token under grafting (the engine resolves its rules on the whole sequence). The cache is
restored after each continuation, so one prefix serves every configuration.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch

from graftlens.bounded import BoundedStore
from graftlens.models.prefix import cache_bytes, continue_and_force, copied_cache, run_prefix
from graftlens.positions import Selector, Spans, first_picked_column, parse_positions

if TYPE_CHECKING:
    from graftlens.graft.rules import Graft
    from graftlens.models.loading import LoadedModel

DEFAULT_PREFIX_BYTES = 1 << 30  # prefixes kept at once (oldest dropped first)


def claims_only_last(rules: Sequence[Graft], attention_mask: torch.Tensor, spans: Sequence[Spans] | None) -> bool:
    """Do the rules, resolved on this (left-padded) batch, claim nothing but its last column?"""
    width = attention_mask.shape[1]
    return width >= 2 and first_claimed_column(rules, attention_mask, spans) >= width - 1


def first_claimed_column(rules: Sequence[Graft], attention_mask: torch.Tensor, spans: Sequence[Spans] | None) -> int:
    """The first column any rule claims in any row of this (left-padded) batch: every column before
    it is the recipient's own computation. The batch's width when no rule claims anything; 0 when
    the batch is not left-padded with a real last column (nothing is shared then)."""
    if attention_mask.shape[1] < 2 or not bool(attention_mask[:, -1].all()):
        return 0
    return min((first_picked_column(rule.positions, attention_mask, spans) for rule in rules), default=attention_mask.shape[1])


def prefix_cut(
    rules: Sequence[Graft], attention_mask: torch.Tensor, spans: Sequence[Spans] | None, grafts_unembedding: bool
) -> int:
    """Where a configuration's shared prefix ends on this batch: its first claimed column (at most
    the last one), or 0 (it runs alone). A continuation computes the last column's logits only, so
    a configuration grafting the unembedding shares a prefix only when it claims nothing but the
    last column."""
    width = attention_mask.shape[1]
    cut = min(first_claimed_column(rules, attention_mask, spans), width - 1)
    return 0 if grafts_unembedding and cut < width - 1 else cut


class SharedPrefix:
    """The recipient's plain forward over a batch's columns before ``cut``, kept as a KV cache and
    continued, as it is or by variants, over the columns after it. Every continuation leaves the
    cache as it found it, so one prefix serves every configuration that shares it."""

    def __init__(self, model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, cut: int):
        self.model, self.input_ids, self.attention_mask = model, input_ids, attention_mask
        self.cut = cut
        self.cache = run_prefix(model, input_ids, attention_mask, cut)  # the recipient's own columns [0, cut)

    @property
    def nbytes(self) -> int:
        return cache_bytes(self.cache)

    def continued(
        self, forced_ids: torch.Tensor | None = None, forced_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[batch, vocab]`` of the last column, and of forced columns after it
        (`continue_and_force`), under whatever grafter is active."""
        return continue_and_force(self.model, self.cache, self.input_ids, self.attention_mask, forced_ids, forced_mask)

    def generated(self, n_new: int) -> torch.Tensor:
        """``LongTensor[batch, n_new]``: greedy tokens after each prompt, continuing a copy of the prefix."""
        from graftlens.models.generate import greedy_continuation

        return greedy_continuation(self.model, self.input_ids, self.attention_mask, n_new, copied_cache(self.cache))

    def continued_variants(
        self, variants: int, forced_ids: torch.Tensor | None = None, forced_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[batch, variants, vocab]`` of the last column, each row continuing the prefix once
        per variant (a grafter with `variant_rules` active grafts each variant's rows its own
        way), and of forced columns after it (``[batch, variants, more, vocab]``)."""
        work, *rows = _as_variants(self.cache, variants, self.input_ids, self.attention_mask, forced_ids, forced_mask)
        last, more = continue_and_force(self.model, work, *rows)  # [batch * variants, vocab], [batch * variants, more, vocab]
        shape = (self.input_ids.shape[0], variants)
        return last.unflatten(0, shape), None if more is None else more.unflatten(0, shape)

    def generated_variants(self, variants: int, n_new: int) -> torch.Tensor:
        """``LongTensor[batch, variants, n_new]``: greedy tokens after each prompt, once per variant
        (a grafter with `variant_rules` active grafts each variant's rows, generated tokens included)."""
        from graftlens.models.generate import greedy_continuation

        work, *rows = _as_variants(self.cache, variants, self.input_ids, self.attention_mask)
        tokens = greedy_continuation(self.model, *rows, n_new, cache=work)  # [batch * variants, n_new]
        return tokens.unflatten(0, (self.input_ids.shape[0], variants))


class PrefixCaches:
    """Shared prefixes of batches, by key, up to ``max_bytes`` (oldest dropped first)."""

    def __init__(self, max_bytes: int = DEFAULT_PREFIX_BYTES):
        self._store: BoundedStore[SharedPrefix] = BoundedStore(max_bytes)

    def get(
        self, key: Hashable, model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, cut: int | None = None
    ) -> SharedPrefix:
        """The `SharedPrefix` of ``model`` over the columns before ``cut`` (all but the last
        by default), made on first use."""
        cut = input_ids.shape[1] - 1 if cut is None else cut
        full_key = key if cut == input_ids.shape[1] - 1 else (key, cut)
        if full_key in self._store:
            return self._store.get(full_key)
        prefix = SharedPrefix(model, input_ids, attention_mask, cut)
        self._store.put(full_key, prefix, prefix.nbytes)
        return prefix


class VariantRows(Selector):
    """The positions ``inner`` picks, in the rows of one variant only: a batch of ``variants``
    variants holds row ``b`` of variant ``v`` at ``b * variants + v`` (``repeat_interleave``)."""

    def __init__(self, inner: Selector, variant: int, variants: int):
        self.inner, self.variant, self.variants = inner, variant, variants

    def resolve(self, attention_mask: torch.Tensor, spans: Sequence[Spans] | None = None) -> torch.Tensor:
        picked = self.inner.resolve(attention_mask, spans)  # [batch * variants, pos]
        rows = torch.arange(picked.shape[0], device=picked.device) % self.variants == self.variant
        return picked & rows[:, None]

    def __str__(self) -> str:
        return f"{self.inner} (variant {self.variant} of {self.variants})"


def variant_rules(rule_sets: Sequence[Sequence[Graft]]) -> list[Graft]:
    """One rule list grafting each rule set into the rows of its own variant."""
    from graftlens.graft.rules import Graft

    out = []
    for v, rules in enumerate(rule_sets):
        for g in rules:
            inner = parse_positions(g.positions) if isinstance(g.positions, str) else g.positions
            if not isinstance(inner, Selector):
                raise TypeError(f"variant rules need selector positions, got {type(g.positions).__name__}")
            out.append(Graft(g.donor, g.components, g.layers, VariantRows(inner, v, len(rule_sets))))
    return out


def _as_variants(cache, variants: int, *tensors: torch.Tensor | None) -> list:
    """A copy of ``cache`` and each of ``tensors`` (None stays None) with every row ``variants``
    times in a row: row ``b`` of variant ``v`` at ``b * variants + v``."""
    return [copied_cache(cache, repeat=variants), *(None if t is None else t.repeat_interleave(variants, 0) for t in tensors)]
