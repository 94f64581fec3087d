"""Prompts ready for a model: token ids, token spans of named slots, and target tokens.

Every dataset (new facts, known facts, entity tracking) turns into `TokenizedPrompt`
here, with spans computed from *character* spans through the tokenizer's offset mapping.
``LT`` (the last token) is always among the spans. The target is the continuation whose
first token is scored; ``target_ids`` keeps all its tokens for multi-token scoring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graftlens.data.spans import SpanError, char_span_to_tokens
from graftlens.errors import DataError


class TokenizerMismatchError(DataError):
    """Prompts were tokenized by one tokenizer and are used with a model of another."""


@dataclass(frozen=True)
class TokenizedPrompt:
    id: str
    prompt: str
    target: str
    input_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    spans: dict[str, tuple[int, int]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def target_id(self) -> int:
        """The first target token: the one next-token metrics score."""
        if not self.target_ids:
            raise DataError(f"prompt {self.id!r} ({self.prompt!r}) has no target to score: give targets=")
        return self.target_ids[0]


def tokenize_prompt(
    tokenizer: Any,
    id: str,
    prompt: str,
    target: str | None,
    char_spans: Mapping[str, Sequence[int]],
    meta: Mapping[str, Any] | None = None,
) -> TokenizedPrompt:
    """Tokenize one prompt and map its character spans onto tokens (raises SpanError naming ``id``).
    ``target=None``: a prompt with nothing to score (``target`` "", no ``target_ids``)."""
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    spans: dict[str, tuple[int, int]] = {}
    for name, (start, stop) in char_spans.items():
        try:
            spans[name] = char_span_to_tokens(prompt, offsets, int(start), int(stop))
        except SpanError as exc:
            raise SpanError(f"example {id!r}: span {name!r}: {exc}") from None
    spans["LT"] = (len(ids) - 1, len(ids))
    target_ids = () if target is None else _target_ids(tokenizer, id, prompt, target, ids)
    return TokenizedPrompt(id, prompt, target or "", tuple(ids), target_ids, spans, dict(meta or {}))


def _target_ids(tokenizer: Any, id: str, prompt: str, target: str, prompt_ids: list[int]) -> tuple[int, ...]:
    """Target tokens as the tokenizer splits ``prompt + target`` (so " Lori" stays one token)."""
    if not target:
        raise SpanError(f"example {id!r} has an empty target")
    full = list(tokenizer(prompt + target)["input_ids"])
    # Tokenizers that append an end token (e.g. some BOS/EOS templates) would put it after the target.
    eos = getattr(tokenizer, "eos_token_id", None)
    if full and eos is not None and full[-1] == eos and (not prompt_ids or prompt_ids[-1] == eos):
        full, prompt_ids = full[:-1], prompt_ids[:-1]
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return tuple(full[len(prompt_ids) :])
    alone = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    if not alone:
        raise SpanError(f"example {id!r}: target {target!r} has no tokens")
    return tuple(alone)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary, so prompts made with one tokenizer are not fed to another."""
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{token}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def check_tokenizer_fits(model: Any, tokenizer: Any, what: str = "model") -> None:
    """Raise when the tokenizer can emit ids the model has no embedding for."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise TokenizerMismatchError(
            f"the tokenizer has {len(tokenizer)} tokens but the {what} embeds only {rows}: they do not belong together"
        )
