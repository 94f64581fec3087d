"""Batches of tokenized prompts: padding, attention masks and span annotations."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from graftlens.data.prompts import TokenizedPrompt
from graftlens.models.text import left_padded, pad_id_of


@dataclass
class Prompts:
    """A left-padded batch of prompts: token ids, mask, named spans and the target to score.

    Every public entry point takes it where it takes ``input_ids`` (its mask, spans and targets
    come along): make one from text with `graftlens.prompts`, from a dataset's test
    examples or known facts with `prompt_batch`.

    Args:
        prompts: each prompt's tokens and named spans (prompt coordinates, ``LT`` included).
        input_ids: ``LongTensor[batch, pos]``, left-padded.
        attention_mask: ``LongTensor[batch, pos]``, 1 on real tokens.
        target_ids: ``LongTensor[batch]``, each prompt's first target token (None: no targets).

    Examples:
        >>> import graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> texts = ["[FE:Ann] stars in", "[FE:Bo Li] stars"]
        >>> batch = graftlens.prompts(m, texts, targets=[" a", " b"])
        >>> graftlens.run_logits(m, batch, last_only=True).shape
        torch.Size([2, 1, 96])
    """

    prompts: list[TokenizedPrompt]
    input_ids: torch.Tensor  # LongTensor[batch, pos], left-padded
    attention_mask: torch.Tensor  # LongTensor[batch, pos]
    target_ids: torch.Tensor | None  # LongTensor[batch]: first target token of each prompt (None: no targets)

    @property
    def spans(self) -> list[dict[str, tuple[int, int]]]:
        """Span annotations in prompt coordinates, as the grafting engine takes them."""
        return [p.spans for p in self.prompts]

    def to(self, device: torch.device | str) -> Prompts:
        targets = None if self.target_ids is None else self.target_ids.to(device)
        return Prompts(self.prompts, self.input_ids.to(device), self.attention_mask.to(device), targets)

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        shown = ", ".join(repr(p.prompt) for p in self.prompts[:3]) + (", ..." if len(self.prompts) > 3 else "")
        return f"Prompts({len(self.prompts)} prompts, width {self.input_ids.shape[1]}: {shown})"


@dataclass
class ForcedTargets:
    """A batch's prompts each followed by its target but the target's last token (teacher forcing):
    the last ``n_target`` columns' logits then predict the target's tokens, the first of them the
    one next-token metrics score. Rows with shorter targets are right-padded (mask 0)."""

    input_ids: torch.Tensor  # LongTensor[batch, prompt width + n_target - 1]
    attention_mask: torch.Tensor  # LongTensor[batch, prompt width + n_target - 1]
    target_ids: torch.Tensor  # LongTensor[batch, n_target], padded with 0
    target_mask: torch.Tensor  # BoolTensor[batch, n_target]: real target tokens

    @property
    def n_target(self) -> int:
        return int(self.target_ids.shape[1])


def with_targets(batch: Prompts, pad_id: int = 0) -> ForcedTargets:
    """Append each prompt's target tokens (all but its last) after the batch's last column."""
    n_target = max(len(p.target_ids) for p in batch.prompts)
    rows = len(batch.prompts)
    targets = torch.full((rows, n_target), pad_id, dtype=torch.long)
    target_mask = torch.zeros((rows, n_target), dtype=torch.bool)
    for i, p in enumerate(batch.prompts):
        targets[i, : len(p.target_ids)] = torch.tensor(p.target_ids, dtype=torch.long)
        target_mask[i, : len(p.target_ids)] = True
    device = batch.input_ids.device
    targets, target_mask = targets.to(device), target_mask.to(device)
    ids = torch.cat([batch.input_ids, targets[:, :-1]], 1)
    mask = torch.cat([batch.attention_mask, target_mask[:, :-1].to(batch.attention_mask.dtype)], 1)
    return ForcedTargets(ids, mask, targets, target_mask)


def collate(prompts: Sequence[TokenizedPrompt], pad_id: int, with_targets: bool = True) -> Prompts:
    """Left-pad so every row's last real token sits at position -1."""
    ids, mask = left_padded([p.input_ids for p in prompts], pad_id)
    targets = torch.tensor([p.target_id for p in prompts], dtype=torch.long) if with_targets else None
    return Prompts(list(prompts), ids, mask, targets)


def batches(prompts: Sequence[TokenizedPrompt], batch_size: int, pad_id: int) -> Iterator[Prompts]:
    """Batches in length order (less padding), each of at most ``batch_size`` prompts."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    for start in range(0, len(order), batch_size):
        yield collate([prompts[i] for i in order[start : start + batch_size]], pad_id)


def prompt_batch(examples: Sequence, tokenizer) -> Prompts:
    """Test examples (a dataset's ``test``, or known facts) tokenized with their spans and
    left-padded into one batch (``input_ids``, ``attention_mask``, ``spans``, ``target_ids``)."""
    from graftlens.data.dataset import TestExample, tokenize_test
    from graftlens.data.known_facts import tokenize_known_facts

    examples = list(examples)
    if examples and not isinstance(examples[0], TestExample):
        return collate(tokenize_known_facts(examples, tokenizer), pad_id_of(tokenizer))
    return collate(tokenize_test(examples, tokenizer), pad_id_of(tokenizer))
