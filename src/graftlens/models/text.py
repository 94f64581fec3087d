"""Plain text into a left-padded batch of token ids, with the model's own tokenizer: what every
entry point does with ``input_ids="some text"`` (or a list of texts) where no span or target is
needed. Prompts with spans and targets: `graftlens.prompts`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from graftlens.errors import InterventionError


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padded positions are masked anyway)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, each ``LongTensor[batch, pos]``: every row's last real token
    in the last column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def encode_texts(tokenizer: Any, texts: str | Sequence[str], who: str = "input_ids") -> tuple[torch.Tensor, torch.Tensor]:
    """``texts`` tokenized and left-padded: ``(input_ids, attention_mask)``."""
    if tokenizer is None:
        raise InterventionError(
            f"{who} is text, and the model has no tokenizer to read it with: pass a LoadedModel (graftlens.load_model) "
            "or token ids"
        )
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise InterventionError(f"{who}: give a non-empty text or a list of non-empty texts")
    rows = [list(tokenizer(t)["input_ids"]) for t in texts]
    return left_padded(rows, pad_id_of(tokenizer))
