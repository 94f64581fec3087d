"""Position selectors: the parser on its own, resolution against the reference's own evaluation,
and the engine-vs-reference check catching a bug planted in rule compilation or selectors."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import VOCAB, make_tiny_model
from graftlens import Graft, grafted_forward
from graftlens.graft import rules as rules_module
from graftlens.graft.reference import reference_forward, rule_claims, selector_claims
from graftlens.positions import (
    ALL,
    LT,
    AllPositions,
    Complement,
    Indices,
    LastToken,
    PositionError,
    Span,
    Union,
    parse_positions,
    resolve_positions,
)

PARSED = {
    "LT": LT,
    "all": ALL,
    "FE": Span("FE"),
    "first-entity": Span("first-entity"),
    "_x1": Span("_x1"),
    "FE+LT": Union((Span("FE"), LT)),
    "FE + LT": Union((Span("FE"), LT)),
    "FE^C": Complement(Span("FE")),
    "LT^C+FE": Union((Complement(LT), Span("FE"))),
    "(FE+LT)^C": Complement(Union((Span("FE"), LT))),
    "((FE))": Span("FE"),
    "(FE+LT)^C^C": Complement(Complement(Union((Span("FE"), LT)))),
    "0": Indices((0,)),
    "-1": Indices((-1,)),
    " 0, 2 ,-1": Indices((0, 2, -1)),
    "0,2^C": Complement(Indices((0, 2))),
    "all^C": Complement(ALL),
    "FE+relation+LT": Union((Span("FE"), Span("relation"), LT)),
}


@pytest.mark.parametrize("text", list(PARSED))
def test_parser_builds_the_selector_tree(text: str) -> None:
    assert parse_positions(text) == PARSED[text]


@pytest.mark.parametrize("text", list(PARSED))
def test_printed_selector_parses_back_to_itself(text: str) -> None:
    selector = parse_positions(text)
    assert parse_positions(str(selector)) == selector


MALFORMED = {
    "": "empty",
    "   ": "empty",
    "FE+": "ends too early",
    "+FE": "at '+'",
    "(FE": "missing ')'",
    "FE)": "unexpected ')'",
    "()": "at ')'",
    "FE^": "at '^'",
    "^C": "at '^C'",
    "FE LT": "unexpected 'LT'",
    "1,,2": "at ',,2'",
    "1,": "at ','",
    "-": "at '-'",
    "FE*LT": "at '*LT'",
    "LT^CC": "unexpected 'C'",
    "3FE": "unexpected 'FE'",
    "FE(LT)": "unexpected '(LT)'",
    "FE++LT": "at '+'",
    "[0]": "at '[0]'",
}


@pytest.mark.parametrize("text", list(MALFORMED))
def test_every_malformed_selector_is_named(text: str) -> None:
    with pytest.raises(PositionError) as info:
        parse_positions(text)
    message = str(info.value)
    assert MALFORMED[text] in message
    if text.strip():
        assert repr(text) in message  # the whole selector is quoted


def _padded(lengths: list[int], left: bool) -> torch.Tensor:
    seq = max(lengths)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, seq - n :] = 1
        else:
            mask[b, :n] = 1
    return mask


def _random_selector(rng: random.Random, depth: int = 0) -> str:
    atoms = ["LT", "all", "FE", "rel", "0", "-2", "1,-1"]
    kind = rng.random() if depth < 2 else 0.0
    if kind < 0.5:
        text = rng.choice(atoms)
    elif kind < 0.8:
        text = "(" + "+".join(_random_selector(rng, depth + 1) for _ in range(rng.randint(2, 3))) + ")"
    else:
        text = "(" + _random_selector(rng, depth + 1) + ")^C"
    return text + ("^C" if rng.random() < 0.2 else "")


@pytest.mark.parametrize("left", [True, False])
def test_resolution_matches_the_plain_set_semantics(left: bool) -> None:
    """``Selector.resolve`` (padded, vectorised) agrees with the reference's one-token evaluation."""
    rng = random.Random(7)
    lengths = [5, 3, 6, 4]
    mask = _padded(lengths, left)
    spans = [{"FE": (0, 2), "rel": (2, n)} for n in lengths]
    for _ in range(60):
        text = _random_selector(rng)
        got = resolve_positions(text, mask, spans)
        want = torch.zeros_like(got)
        for b, n in enumerate(lengths):
            real = mask[b].bool().nonzero().squeeze(1).tolist()
            for t, col in enumerate(real):
                want[b, col] = rule_claims(text, b, col, t, n, spans[b])
        assert torch.equal(got, want), text


def test_plain_semantics_by_hand() -> None:
    n, spans = 5, {"FE": (1, 3)}
    claimed = lambda s: [t for t in range(n) if selector_claims(parse_positions(s), t, n, spans)]  # noqa: E731
    assert claimed("LT") == [4]
    assert claimed("FE") == [1, 2]
    assert claimed("FE+LT") == [1, 2, 4]
    assert claimed("(FE+LT)^C") == [0, 3]
    assert claimed("0,-2") == [0, 3]
    assert claimed("all^C") == []
    assert isinstance(parse_positions("all"), AllPositions) and isinstance(parse_positions("LT"), LastToken)


def test_index_lists_and_masks_resolve_in_prompt_coordinates() -> None:
    mask = _padded([3, 5], left=True)
    got = resolve_positions([[0, -1], [1]], mask)
    assert got.tolist() == [[False, False, True, False, True], [False, True, False, False, False]]
    with pytest.raises(PositionError, match="out of range for example 0 with 3 tokens"):
        resolve_positions([[3], [0]], mask)
    with pytest.raises(PositionError, match="got position lists for 1 examples, the batch has 2"):
        resolve_positions([[0]], mask)
    with pytest.raises(PositionError, match="no span 'FE'"):
        resolve_positions("FE", mask, [{}, {}])
    with pytest.raises(PositionError, match="outside its 3 tokens"):
        resolve_positions("FE", mask, [{"FE": (1, 4)}, {"FE": (0, 1)}])


def _selector_rules(rng: random.Random) -> list[Graft]:
    comps = ["q", "k+v", "o", "mlp", "attn", "embed", "ln_attn"]
    return [Graft(rng.choice("ab"), rng.choice(comps), sorted(rng.sample(range(4), 2)), _random_selector(rng)) for _ in range(3)]


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [6, 5, 7]
    mask = _padded(lengths, left=True)
    ids = torch.randint(3, VOCAB, mask.shape, generator=g).masked_fill(mask == 0, 1)
    spans = [{"FE": (1, 3), "rel": (3, n - 1)} for n in lengths]
    return ids, mask, spans


@pytest.mark.parametrize("seed", [0, 1])
def test_engine_equals_reference_with_selector_rules(seed: int) -> None:
    base, a, b = make_tiny_model("llama", 0), make_tiny_model("llama", 1), make_tiny_model("llama", 2)
    ids, mask, spans = _inputs(seed)
    rules = _selector_rules(random.Random(seed))
    got = grafted_forward(base, {"a": a, "b": b}, rules, ids, mask, spans)
    want = reference_forward(base, {"a": a, "b": b}, ids, mask, rules, spans)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)


def _planted(monkeypatch, bug: str) -> None:
    """Plant one bug in the engine's side: rule compilation or selector resolution."""
    if bug == "earlier rule wins":
        compile_rules = rules_module.compile_rules

        def first_wins(adapter, rules, *args, **kwargs):
            return compile_rules(adapter, list(reversed(rules)), *args, **kwargs)

        monkeypatch.setattr("graftlens.graft.engine.compile_rules", first_wins)
    elif bug == "last token off by one":
        monkeypatch.setattr(LastToken, "_mask", lambda self, n, spans, example: torch.arange(n) == n - 2)
    elif bug == "span end inclusive":

        def inclusive(self, n, spans, example):
            start, stop = spans[self.name]
            return (torch.arange(n) >= start) & (torch.arange(n) <= stop)

        monkeypatch.setattr(Span, "_mask", inclusive)


@pytest.mark.parametrize("bug", ["earlier rule wins", "last token off by one", "span end inclusive"])
def test_the_reference_catches_a_planted_engine_bug(bug: str, monkeypatch) -> None:
    """The oracle shares no rule compilation or selector code with the engine: a bug planted
    there makes the two disagree (a check that the equality tests above could fail)."""
    base, a, b = make_tiny_model("llama", 0), make_tiny_model("llama", 1), make_tiny_model("llama", 2)
    ids, mask, spans = _inputs(3)
    rules = [Graft("a", "attn+mlp", [0, 1, 2], "FE+LT"), Graft("b", "mlp+o", [1, 2], "(rel+LT)")]
    want = reference_forward(base, {"a": a, "b": b}, ids, mask, rules, spans)
    real = mask.bool()
    honest = grafted_forward(base, {"a": a, "b": b}, rules, ids, mask, spans)
    torch.testing.assert_close(honest[real], want[real], rtol=1e-4, atol=1e-4)
    _planted(monkeypatch, bug)
    got = grafted_forward(base, {"a": a, "b": b}, rules, ids, mask, spans)
    assert (got[real] - want[real]).abs().max() > 1e-3
