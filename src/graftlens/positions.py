"""Position selectors: the one way every method names token positions.

A graft rule, an activation patch, a lens readout and an attention knockout all take the same
forms: a selector (or its string), per-example index lists, or a padded ``BoolTensor``.

Selectors work in *prompt coordinates*: 0 is an example's first real token, -1 its last real
token (``LT``), whatever the padding side. They resolve to a ``BoolTensor[batch, pos]`` in the
padded batch from the attention mask and, for named spans (``FE``, ``movie``, ...), the span
annotations of each example (``{"FE": (start, stop)}``, half-open, prompt coordinates).

Strings parse to selectors: ``"LT"``, ``"FE+LT"`` (union), ``"FE^C"`` / ``"(FE+LT)^C"``
(complement within the real tokens), ``"all"``, ``"new"``.

Tokens after the prompt (generated, or a target teacher-forced after it) are *new*: the prompt
ends where its ``LT`` span ends. ``"new"`` picks them; ``LT`` picks the last token of whatever
sequence is resolved, so an intervention that re-resolves its selector for each new token (as
grafting does) applies ``LT`` to every generated token, as a token-by-token loop would.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from graftlens.errors import InterventionError

if TYPE_CHECKING:
    import torch


class PositionError(InterventionError):
    """A position selector is malformed, names an unknown span, or has the wrong shape."""


Spans = Mapping[str, tuple[int, int]]


class Selector:
    """Base of position selectors; combine with ``|`` (union) and ``~`` (complement)."""

    def resolve(self, attention_mask: torch.Tensor, spans: Sequence[Spans] | None = None) -> torch.Tensor:
        """``BoolTensor[batch, pos]`` of the positions claimed, in padded coordinates."""
        import torch

        lengths = attention_mask.sum(-1).tolist()
        local = torch.zeros(attention_mask.shape, dtype=torch.bool, device=attention_mask.device)
        for b, n in enumerate(lengths):
            example_spans = spans[b] if spans is not None else None
            local[b, :n] = self._mask(int(n), example_spans, b)
        # Scatter prompt coordinates onto the real (attended) positions of each row.
        out = torch.zeros_like(local)
        real = attention_mask.bool()
        out[real] = local[_prompt_order(real)]
        return out

    def _mask(self, n: int, spans: Spans | None, example: int) -> torch.Tensor:
        raise NotImplementedError

    def __or__(self, other: Selector) -> Selector:
        return Union((self, other))

    def __invert__(self) -> Selector:
        return Complement(self)


def _prompt_order(real: torch.Tensor) -> torch.Tensor:
    """Boolean mask over ``[batch, pos]`` picking, row by row, the first ``n_real`` entries:
    the prompt-coordinate values that belong on the real positions (in order)."""
    import torch

    n_real = real.sum(-1, keepdim=True)
    idx = torch.arange(real.shape[1], device=real.device).expand_as(real)
    return idx < n_real


@dataclass(frozen=True)
class AllPositions(Selector):
    def _mask(self, n: int, spans: Spans | None, example: int) -> torch.Tensor:
        import torch

        return torch.ones(n, dtype=torch.bool)

    def __str__(self) -> str:
        return "all"


@dataclass(frozen=True)
class Indices(Selector):
    """Explicit prompt-coordinate indices (negative counts from the last real token)."""

    indices: tuple[int, ...]

    def _mask(self, n: int, spans: Spans | None, example: int) -> torch.Tensor:
        import torch

        m = torch.zeros(n, dtype=torch.bool)
        for i in self.indices:
            if not -n <= i < n:
                raise PositionError(f"position {i} out of range for example {example} with {n} tokens")
            m[i] = True
        return m

    def __str__(self) -> str:
        return ",".join(map(str, self.indices))


@dataclass(frozen=True)
class LastToken(Selector):
    def _mask(self, n: int, spans: Spans | None, example: int) -> torch.Tensor:
        import torch

        m = torch.zeros(n, dtype=torch.bool)
        m[n - 1] = True
        return m

    def __str__(self) -> str:
        return "LT"


@dataclass(frozen=True)
class NewTokens(Selector):
    """The tokens after the prompt: prompt coordinates from the end of the example's ``LT`` span on."""

    def _mask(self, n: int, spans: Spans | None, example: int) -> torch.Tensor:
        import torch

        if spans is None or "LT" not in spans:
            raise PositionError(f"example {example} has no LT span: 'new' needs to know where its prompt ends")
        m = torch.zeros(n, dtype=torch.bool)
        m[spans["LT"][1] :] = True
        return m

    def __str__(self) -> str:
        return "new"


@dataclass(frozen=True)
class Span(Selector):
    """A named span of the example's annotations (``FE``, ``movie``, ``relation``, ...)."""

    name: str

    def _mask(self, n: int, spans: Spans | None, example: int) -> torch.Tensor:
        import torch

        if spans is None or self.name not in spans:
            known = ", ".join(sorted(spans)) if spans else "none"
            raise PositionError(f"example {example} has no span {self.name!r} (its spans: {known})")
        start, stop = spans[self.name]
        if not 0 <= start < stop <= n:
            raise PositionError(f"span {self.name!r}=({start}, {stop}) of example {example} is outside its {n} tokens")
        m = torch.zeros(n, dtype=torch.bool)
        m[start:stop] = True
        return m

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Union(Selector):
    parts: tuple[Selector, ...]

    def _mask(self, n: int, spans: Spans | None, example: int) -> torch.Tensor:
        import torch

        m = torch.zeros(n, dtype=torch.bool)
        for p in self.parts:
            m |= p._mask(n, spans, example)
        return m

    def __str__(self) -> str:
        return "+".join(str(p) for p in self.parts)


@dataclass(frozen=True)
class Complement(Selector):
    inner: Selector

    def _mask(self, n: int, spans: Spans | None, example: int) -> torch.Tensor:
        return ~self.inner._mask(n, spans, example)

    def __str__(self) -> str:
        inner = str(self.inner)
        return f"({inner})^C" if "+" in inner else f"{inner}^C"


LT = LastToken()
ALL = AllPositions()
NEW = NewTokens()

_TOKEN = re.compile(r"\s*(\(|\)|\+|\^C|[A-Za-z_][\w-]*|-?\d+(?:\s*,\s*-?\d+)*)")


def parse_positions(text: str) -> Selector:
    """Parse ``"FE+LT"``, ``"(FE+LT)^C"``, ``"LT^C"``, ``"all"``, ``"0,2,-1"`` into a selector.

    Named spans (``FE``, ``subject``, ...) come from each example's spans; ``LT`` is the last real
    token; indices count in prompt coordinates (0 = first real token, -1 = last), so left and
    right padding give the same positions. ``+`` is union, ``^C`` complement.

    Args:
        text: the selector, in the position language.

    Returns:
        Selector: ``resolve(attention_mask, spans)`` gives ``BoolTensor[batch, pos]``.

    Raises:
        PositionError: the text does not parse, naming where.

    Examples:
        >>> import torch, graftlens
        >>> selector = graftlens.parse_positions("(FE+LT)^C")
        >>> mask = torch.tensor([[0, 1, 1, 1, 1, 1]])  # one left-padded prompt
        >>> selector.resolve(mask, [{"FE": (0, 2)}]).int()  # [batch, pos], padded coordinates
        tensor([[0, 0, 0, 1, 1, 0]], dtype=torch.int32)
    """
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise PositionError(f"bad position selector {text!r} at {text[pos:]!r}")
        tokens.append(m.group(1).replace(" ", ""))
        pos = m.end()
    if not tokens:
        raise PositionError("empty position selector")
    selector, rest = _parse_union(tokens, text)
    if rest:
        raise PositionError(f"bad position selector {text!r}: unexpected {''.join(rest)!r}")
    return selector


def _parse_union(tokens: list[str], text: str) -> tuple[Selector, list[str]]:
    parts = []
    sel, tokens = _parse_atom(tokens, text)
    parts.append(sel)
    while tokens and tokens[0] == "+":
        sel, tokens = _parse_atom(tokens[1:], text)
        parts.append(sel)
    return (parts[0] if len(parts) == 1 else Union(tuple(parts))), tokens


def _parse_atom(tokens: list[str], text: str) -> tuple[Selector, list[str]]:
    if not tokens:
        raise PositionError(f"bad position selector {text!r}: ends too early")
    head, tokens = tokens[0], tokens[1:]
    if head == "(":
        sel, tokens = _parse_union(tokens, text)
        if not tokens or tokens[0] != ")":
            raise PositionError(f"bad position selector {text!r}: missing ')'")
        tokens = tokens[1:]
    elif head == "LT":
        sel = LT
    elif head == "all":
        sel = ALL
    elif head == "new":
        sel = NEW
    elif re.fullmatch(r"-?\d+(,-?\d+)*", head):
        sel = Indices(tuple(int(x) for x in head.split(",")))
    elif re.fullmatch(r"[A-Za-z_][\w-]*", head):
        sel = Span(head)
    else:
        raise PositionError(f"bad position selector {text!r} at {head!r}")
    while tokens and tokens[0] == "^C":
        sel, tokens = Complement(sel), tokens[1:]
    return sel, tokens


def first_picked_column(positions: PositionsLike, attention_mask: torch.Tensor, spans: Sequence[Spans] | None = None) -> int:
    """The first padded column ``positions`` picks in any row: nothing before it is touched by an
    intervention there (the batch's width when it picks nothing)."""
    hits = resolve_positions(positions, attention_mask, spans).any(0).nonzero()  # [n, 1]: columns some row picks
    return int(hits[0]) if len(hits) else attention_mask.shape[1]


# A forward reference to torch.Tensor: this module loads without torch (recipes are checked with it).
PositionsLike = typing.Union[Selector, str, "torch.Tensor", Sequence[Sequence[int]], None]  # noqa: UP007


def resolve_positions(
    positions: PositionsLike,
    attention_mask: torch.Tensor,
    spans: Sequence[Spans] | None = None,
) -> torch.Tensor:
    """Any accepted form of positions → ``BoolTensor[batch, pos]`` in padded coordinates.

    ``None`` = every position; a BoolTensor is used as is (its shape must match); a selector or
    string resolves per example; a list of index lists gives prompt-coordinate indices per example.
    """
    import torch

    batch, seq = attention_mask.shape
    if positions is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=attention_mask.device)
    if isinstance(positions, torch.Tensor):
        if positions.dtype != torch.bool or tuple(positions.shape) != (batch, seq):
            raise PositionError(
                f"position mask must be a BoolTensor of shape [batch, pos] = [{batch}, {seq}], "
                f"got {positions.dtype} {list(positions.shape)}"
            )
        return positions.to(attention_mask.device)
    if isinstance(positions, str):
        positions = parse_positions(positions)
    if isinstance(positions, Selector):
        return positions.resolve(attention_mask, spans)
    rows = list(positions)
    if len(rows) != batch:
        raise PositionError(f"got position lists for {len(rows)} examples, the batch has {batch}")
    masks = [Indices(tuple(int(i) for i in row)) for row in rows]
    out = torch.zeros(batch, seq, dtype=torch.bool, device=attention_mask.device)
    for b, sel in enumerate(masks):
        out[b] = sel.resolve(attention_mask[b : b + 1])[0]
    return out
