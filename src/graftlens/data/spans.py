"""Token spans of substrings of a prompt, from the tokenizer's character offsets.

Right for tokenizers that fold the leading space into the next token (" Quist" is one token
whose offsets may start at the space): a token belongs to a span when its characters overlap
the substring's characters, not counting leading whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from graftlens.errors import DataError


class SpanError(DataError):
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
    enc = tokenizer(text, return_offsets_mapping=True)
    return char_span_to_tokens(text, enc["offset_mapping"], start_char, start_char + len(substring))


def char_span_to_tokens(text: str, offsets: Sequence[Sequence[int]], start_char: int, end_char: int) -> tuple[int, int]:
    """Half-open token span covering characters ``[start_char, end_char)`` of ``text``.

    ``offsets`` is the tokenizer's offset mapping of ``text``. Raises `SpanError` when
    the characters are out of range or no token overlaps them."""
    if not 0 <= start_char < end_char <= len(text):
        raise SpanError(f"characters [{start_char}, {end_char}) are outside the {len(text)} characters of {text!r}")
    tokens = []
    for i, (s, e) in enumerate(offsets):
        piece = text[s:e]
        s += len(piece) - len(piece.lstrip())  # ignore a folded-in leading space
        if e > s and s < end_char and e > start_char:
            tokens.append(i)
    if not tokens:
        raise SpanError(f"{text[start_char:end_char]!r} covers no token of prompt {text!r}")
    return tokens[0], tokens[-1] + 1


#: A marked span: ``[NAME:text]``; NAME is a span name (letters, digits, underscores).
MARK = re.compile(r"\[(?P<name>[A-Za-z_]\w*):(?P<text>[^\[\]]+)\]")


def unmark(text: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """``text`` without its ``[NAME:words]`` marks, and each mark's character span in it.

    Examples:
        >>> from graftlens.data.spans import unmark
        >>> unmark("[FE:Lori Barker] stars in a movie alongside")
        ('Lori Barker stars in a movie alongside', {'FE': (0, 11)})
    """
    plain, spans, last = [], {}, 0
    length = 0
    for m in MARK.finditer(text):
        before = text[last : m.start()]
        plain.append(before)
        length += len(before)
        if m["name"] in spans:
            raise SpanError(f"{text!r}: span {m['name']!r} is marked twice")
        spans[m["name"]] = (length, length + len(m["text"]))
        plain.append(m["text"])
        length += len(m["text"])
        last = m.end()
    plain.append(text[last:])
    out = "".join(plain)
    if re.search(r"\[[A-Za-z_]\w*:", out):
        raise SpanError(f"{text!r}: a span mark [NAME:words] is not closed, or holds a bracket")
    return out, spans
