"""Prompts from text: ``graftlens.prompts(model, texts, spans=..., targets=...)``.

Spans are marked in the text itself, ``"[FE:Lori Barker] stars in a movie alongside"`` (the
brackets and the name are removed, the span covers ``Lori Barker``), or given per text as
``{name: substring}``. ``LT``, the last token, is always a span. Targets are strings whose first
token is the one scored (``" Gregory"``: mind the leading space).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from graftlens.data.prompts import TokenizedPrompt, tokenize_prompt
from graftlens.data.spans import SpanError, unmark
from graftlens.eval.batching import Prompts, collate
from graftlens.models.text import pad_id_of


def prompts(
    model_or_tokenizer: Any,
    texts: str | Sequence[str],
    *,
    spans: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
    targets: str | Sequence[str] | None = None,
) -> Prompts:
    """Tokenize ``texts`` into one left-padded `Prompts` batch, with named spans and targets.

    Args:
        model_or_tokenizer: a `LoadedModel` (its tokenizer is used) or a tokenizer.
        texts: one text or several; spans may be marked in them as ``[NAME:words]``.
        spans: ``{name: substring}`` for every text, or one such mapping per text (the first
            occurrence of the substring is the span).
        targets: the continuation whose first token each prompt is scored on, one per text
            (or one string for a single text).

    Returns:
        Prompts: ``input_ids`` and ``attention_mask`` ``[batch, pos]`` (left-padded),
        ``spans`` per prompt in prompt coordinates (``LT`` included) and ``target_ids``
        ``[batch]`` (``None`` without targets).

    Raises:
        SpanError: a marked span is malformed, or a substring is not in its text.

    Examples:
        >>> import graftlens
        >>> from graftlens.models import tiny_model
        >>> texts = ["[FE:Lori Barker] stars in", "[FE:Ann] stars"]
        >>> batch = graftlens.prompts(tiny_model("llama"), texts)
        >>> batch.input_ids.shape[0], sorted(batch.spans[0])
        (2, ['FE', 'LT'])
    """
    tokenizer = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if tokenizer is None or not callable(tokenizer):
        raise SpanError("prompts needs a tokenizer: pass the LoadedModel (graftlens.load_model) or its tokenizer")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise SpanError("prompts needs at least one text")
    per_text = _per_text(spans, len(texts), "spans")
    target_list = _per_text([targets] if isinstance(targets, str) else targets, len(texts), "targets")
    made = [_prompt(tokenizer, i, text, per_text[i] or {}, target_list[i]) for i, text in enumerate(texts)]
    return collate(made, pad_id_of(tokenizer), with_targets=targets is not None)


def _per_text(values: Any, n: int, what: str) -> list:
    if values is None:
        return [None] * n
    if isinstance(values, Mapping):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise SpanError(f"prompts: {what} has {len(values)} entries for {n} texts")
    return values


def _prompt(tokenizer: Any, i: int, text: str, named: Mapping[str, str], target: str | None) -> TokenizedPrompt:
    plain, char_spans = unmark(text)
    for name, substring in named.items():
        if name in char_spans:
            raise SpanError(f"text {i} ({text!r}): span {name!r} is both marked and given in spans")
        start = plain.find(substring)
        if not substring or start < 0:
            raise SpanError(f"text {i} ({plain!r}): span {name!r} = {substring!r} is not in the text")
        char_spans[name] = (start, start + len(substring))
    if target is not None and not isinstance(target, str):
        raise SpanError(f"text {i}: a target is a string, not {type(target).__name__}")
    return tokenize_prompt(tokenizer, f"text-{i}", plain, target, char_spans)
