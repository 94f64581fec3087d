"""The canonical vocabulary: component groups and layer selections."""

from __future__ import annotations

import pytest

from graftlens.errors import LayerSelectionError, UnknownComponentError
from graftlens.models import expand_components, select_layers
from graftlens.models.names import layer_groups


def test_groups_expand_in_canonical_order() -> None:
    assert expand_components("attn") == ("q", "k", "v", "o")
    assert expand_components("o+mlp") == ("o", "gate", "up", "down")
    assert expand_components(["mlp", "q"]) == ("q", "gate", "up", "down")
    assert expand_components("all")[-3:] == ("embed", "lm_head", "ln_final")


def test_groups_drop_what_the_model_lacks_but_explicit_names_do_not() -> None:
    gpt2 = ("q", "k", "v", "o", "up", "down", "ln_attn", "ln_mlp", "embed", "lm_head", "ln_final")
    assert expand_components("mlp", available=gpt2) == ("up", "down")
    with pytest.raises(UnknownComponentError, match="'gate' is absent"):
        expand_components("gate", available=gpt2)


@pytest.mark.parametrize("bad", ["mlp_out", "Q", "attn+foo", ""])
def test_unknown_component_names_the_culprit(bad: str) -> None:
    with pytest.raises(UnknownComponentError, match=repr(bad.split("+")[-1]) if bad else "no component"):
        expand_components(bad)


def test_layer_groups_split_evenly_earlier_groups_larger() -> None:
    assert [len(g) for g in layer_groups(30, 4)] == [8, 8, 7, 7]
    assert layer_groups(30, 2) == [list(range(15)), list(range(15, 30))]
    assert sum(layer_groups(30, 8), []) == list(range(30))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", tuple(range(12))),
        (3, (3,)),
        ([5, 1, 5], (1, 5)),
        (range(2, 4), (2, 3)),
        ("2-4", (2, 3, 4)),
        ("1,7, 3", (1, 3, 7)),
        ("half2", tuple(range(6, 12))),
        ("second_half", tuple(range(6, 12))),
        ("quarter1", (0, 1, 2)),
        ("last_quarter", (9, 10, 11)),
        ("eighth8", (11,)),
    ],
)
def test_select_layers(spec, expected) -> None:
    assert select_layers(spec, 12) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (12, "layer 12 out of range"),
        ("0-20", "layer 12 out of range"),
        ("quarter5", "quarter runs from 1 to 4"),
        ("middle", "bad layer selection 'middle'"),
        ("5-2", "end before start"),
        (-1, "layer -1 out of range"),
    ],
)
def test_bad_layer_selections(spec, message) -> None:
    with pytest.raises(LayerSelectionError, match=message):
        select_layers(spec, 12)
