"""Training batches: tokenized texts with loss masks, in a seeded, length-bucketed order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graftlens.data.spans import char_span_to_tokens


@dataclass(frozen=True)
class TrainItem:
    input_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]  # True where the token is predicted (its label counts)


def tokenize_texts(tokenizer, texts: Sequence[str], target_spans: Sequence[tuple[int, int]] | None = None) -> list[TrainItem]:
    """Token ids and loss masks; with ``target_spans`` (character spans) only those tokens count."""
    items = []
    for i, text in enumerate(texts):
        enc = tokenizer(text, return_offsets_mapping=target_spans is not None)
        ids = tuple(enc["input_ids"])
        if target_spans is None:
            mask = tuple([False] + [True] * (len(ids) - 1))  # the first token has nothing to predict it
        else:
            start, stop = char_span_to_tokens(text, enc["offset_mapping"], *target_spans[i])
            mask = tuple(start <= j < stop and j > 0 for j in range(len(ids)))
        items.append(TrainItem(ids, mask))
    return items


def epoch_batches(n_items: int, lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index batches for one epoch: shuffled, then sorted by length within windows of 8
    batches (less padding), then the batches shuffled again. Depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_items, generator=g).tolist()
    window = batch_size * 8
    out: list[list[int]] = []
    for w in range(0, n_items, window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        out.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    perm = torch.randperm(len(out), generator=g).tolist()
    return [out[i] for i in perm]


def collate_train(items: Sequence[TrainItem], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 where no loss), each ``[batch, pos]``."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for b, it in enumerate(items):
        n = len(it.input_ids)
        row = torch.tensor(it.input_ids, dtype=torch.long)
        ids[b, :n] = row
        attn[b, :n] = 1
        keep = torch.tensor(it.loss_mask, dtype=torch.bool)
        labels[b, :n] = torch.where(keep, row, torch.full_like(row, -100))
    return ids, attn, labels
