"""Token spans of substrings of a prompt, from the tokenizer's character offsets.

Right for tokenizers that fold the leading space into the next token (" Quist" is one token
whose offsets may start at the space): a token belongs to a span when its characters overlap
the substring's characters, not counting leading whitespace.
"""

from __future__ import annotations

from typing import Any

from graftlens.errors import GraftlensError


class SpanError(GraftlensError):
    """A substring is absent from its prompt, or covers no token."""


def token_span(tokenizer: Any, text: str, substring: str, occurrence: int = 0) -> tuple[int, int]:
    """Half-open token span ``(start, stop)`` of ``substring`` in ``tokenizer(text)``.

    ``occurrence`` picks which occurrence when the substring appears several times.
    Token indices are those of ``tokenizer(text)`` as is (special tokens included when the
    tokenizer adds them), i.e. prompt coordinates for the grafting engine.
    """
    start_char = -1
    for _ in range(occurrence + 1):
        start_char = text.find(substring, start_char + 1)
        if start_char < 0:
            raise SpanError(f"{substring!r} (occurrence {occurrence}) not found in prompt {text!r}")
    end_char = start_char + len(substring)
    enc = tokenizer(text, return_offsets_mapping=True)
    tokens = []
    for i, (s, e) in enumerate(enc["offset_mapping"]):
        piece = text[s:e]
        s += len(piece) - len(piece.lstrip())  # ignore a folded-in leading space
        if e > s and s < end_char and e > start_char:
            tokens.append(i)
    if not tokens:
        raise SpanError(f"{substring!r} covers no token of prompt {text!r}")
    return tokens[0], tokens[-1] + 1
