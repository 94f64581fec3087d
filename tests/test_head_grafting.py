"""Head-level weight grafting: a head's rows of q, k, v (its KV head's, for k and v) and its columns
of o, from the donor, at the positions a rule claims. The engine grafts a spliced copy of each
projection; the literal reference writes the head's rows and columns into a per-token copy of
the recipient. They must agree on every family, fused projections and grouped-query attention
included."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import make_tiny_model
from graftlens import Graft, HeadGraft, graft_sweep, grafted_forward
from graftlens.graft.heads import HeadGraftError, expand_head_grafts
from graftlens.graft.reference import reference_forward
from graftlens.models import as_loaded
from graftlens.models.run import position_ids_for
from test_graft import batch


def _plain(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask)).logits


def _random_head_grafts(rng: random.Random, t: int) -> list[HeadGraft]:
    rules = []
    layers = rng.sample(range(4), 2)  # the rules share no module: each has a layer of its own
    for layer, donor in zip(layers, ["a", "b"]):
        heads = [(layer, h) for h in rng.sample(range(4), rng.randint(1, 3))]
        parts = rng.choice([("q", "k", "v", "o"), ("q",), ("k", "v"), ("o",), ("q", "o")])
        positions = [sorted(rng.sample(range(t), rng.randint(1, t))) for _ in range(3)]
        rules.append(HeadGraft(donor, heads, positions, parts))
    return rules


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_head_grafts_equal_the_literal_reference(family: str, seed: int) -> None:
    recipient, a, b = make_tiny_model(family, 0), make_tiny_model(family, 1), make_tiny_model(family, 2)
    ids, mask = batch(seed)
    rules = _random_head_grafts(random.Random(f"{family}-{seed}"), ids.shape[1] - 2)
    donors = {"a": a, "b": b}
    got = grafted_forward(recipient, donors, rules, ids, mask)
    want = reference_forward(recipient, donors, ids, mask, rules)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
    assert (got[real] - _plain(recipient, ids, mask)[real]).abs().max() > 1e-4  # the heads did something


def test_every_head_is_the_component_graft(family: str) -> None:
    """Every head of every layer, all four parts, is the component graft of q, k, v and o, where a
    head's parts are all of the module: no bias on o and no norm over q or k."""
    recipient, donor = as_loaded(make_tiny_model(family, 0)), make_tiny_model(family, 1)
    a = recipient.adapter
    o_bias = any(recipient.model.get_submodule(s.path).bias is not None for s in a.sites("o", 0))
    norms = any(recipient.model.get_submodule(s.path).weight.dim() == 1 for s in a.sites("q", 0))
    ids, mask = batch(5)
    heads = [(layer, h) for layer in range(a.n_layers) for h in range(a.n_heads)]
    by_heads = grafted_forward(recipient, {"ft": donor}, [HeadGraft("ft", heads, "all")], ids, mask)
    whole = grafted_forward(recipient, {"ft": donor}, [Graft("ft", "q+k+v+o", "all", "all")], ids, mask)
    real = mask.bool()
    gap = (by_heads[real] - whole[real]).abs().max()
    if o_bias or norms:
        assert gap > 1e-4  # o's bias (or the q/k norm) stays the recipient's in a head graft
    else:
        assert gap < 1e-4


def test_a_kv_head_is_grafted_whole_under_grouped_query_attention() -> None:
    """llama's tiny model has 4 query heads on 2 KV heads: grafting k and v of query head 0 or of
    query head 1 grafts the same KV head."""
    recipient, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    assert as_loaded(recipient).adapter.n_kv_heads == 2
    ids, mask = batch(3)
    one = grafted_forward(recipient, {"ft": donor}, [HeadGraft("ft", [(2, 0)], "all", "k+v")], ids, mask)
    other = grafted_forward(recipient, {"ft": donor}, [HeadGraft("ft", [(2, 1)], "all", "k+v")], ids, mask)
    third = grafted_forward(recipient, {"ft": donor}, [HeadGraft("ft", [(2, 2)], "all", "k+v")], ids, mask)
    real = mask.bool()
    assert (one[real] - other[real]).abs().max() < 1e-6
    assert (one[real] - third[real]).abs().max() > 1e-4


def test_a_head_graft_claiming_no_position_is_the_recipient_bit_for_bit(family: str) -> None:
    recipient, donor = make_tiny_model(family, 0), make_tiny_model(family, 1)
    ids, mask = batch(2)
    got = grafted_forward(recipient, {"ft": donor}, [HeadGraft("ft", [(1, 1)], [[], [], []])], ids, mask)
    assert torch.equal(got, grafted_forward(recipient, {"ft": donor}, [], ids, mask))


def test_graft_sweep_takes_head_grafts() -> None:
    recipient, donor = make_tiny_model("gpt_neox", 0), make_tiny_model("gpt_neox", 1)
    ids, mask = batch(4)
    spans = [{"LT": (6, 7)}, {"LT": (6, 7)}, {"LT": (6, 7)}]
    configs = {
        "value heads": [HeadGraft("ft", [(3, 0), (3, 2)], "LT")],
        "q of 1.1": [HeadGraft("ft", [(1, 1)], "all", "q")],
        "mlp": [Graft("ft", "mlp", "half2", "LT")],
    }
    out = graft_sweep(recipient, {"ft": donor}, configs, ids, mask, spans=spans)
    for name, rules in configs.items():
        want = grafted_forward(recipient, {"ft": donor}, rules, ids, mask, spans=spans)[:, -1]
        assert (out[name] - want).abs().max() < 1e-4, name


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([HeadGraft("ft", [(4, 0)])], "head 4.0 is not a head of the model"),
        ([HeadGraft("ft", [(1, 9)])], "head 1.9 is not a head of the model"),
        ([HeadGraft("ft", [(1, 0)], parts="q+mlp")], "parts ['mlp'] are not parts of a head"),
        ([HeadGraft("nobody", [(1, 0)])], "head graft names donor 'nobody'"),
        ([HeadGraft("ft", [(1, 0)], [[0], [1], [2]]), HeadGraft("ft", [(1, 2)], "LT")], "need selectors"),
        (
            [HeadGraft("ft", [(1, 0)], "LT", p + "o") for p in ["", "q+", "k+", "v+", "q+k+", "q+v+", "k+v+"]],
            "7 head grafts at different positions or donors share o of layer 1",
        ),
        ([Graft("ft", "q", [1], "LT"), HeadGraft("ft", [(1, 2)], "LT")], "is grafted by two rules"),
    ],
)
def test_bad_head_grafts_are_one_error(rules, message) -> None:
    recipient, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask = batch(1)
    with pytest.raises(HeadGraftError) as caught:
        grafted_forward(recipient, {"ft": donor}, rules, ids, mask)
    assert message in str(caught.value)


def _overlapping_head_grafts(rng: random.Random, t: int, n_sets: int) -> list[HeadGraft]:
    """Head grafts of random donors, parts and positions (index selectors, some shared), all in
    layers 1 and 2, so that they share modules."""
    rules = []
    for i in range(n_sets):
        layers = [1] if i < 2 else [1, 2]  # the first two share layer 1's q (and are of two donors)
        heads = [(rng.choice(layers), h) for h in rng.sample(range(4), rng.randint(1, 3))]
        with_q = [("q", "k", "v", "o"), ("q",), ("q", "o")]
        parts = rng.choice(with_q if i < 2 else [*with_q, ("k", "v"), ("o",)])
        positions = ",".join(map(str, sorted(rng.sample(range(t), rng.randint(1, t)))))
        donor = ["a", "b"][i] if i < 2 else rng.choice(["a", "b"])
        rules.append(HeadGraft(donor, heads, rng.choice([positions, "all", "-1"]), parts))
    return rules


@pytest.mark.parametrize("seed", [0, 1])
def test_head_grafts_sharing_modules_at_different_positions_equal_the_reference(family: str, seed: int) -> None:
    """A circuit's groups graft heads of one layer at different positions: at each position the
    module computes with exactly the heads claimed there (every combination of sets sharing a
    module gets its rule), as the literal per-token reading of the rules says."""
    recipient, a, b = make_tiny_model(family, 0), make_tiny_model(family, 1), make_tiny_model(family, 2)
    ids, mask = batch(seed)
    rules = _overlapping_head_grafts(random.Random(f"overlap-{family}-{seed}"), ids.shape[1] - 2, 3 + seed)
    donors = {"a": a, "b": b}
    expanded, _ = expand_head_grafts(as_loaded(recipient), donors, rules)
    assert any("&" in rule.donor for rule in expanded)  # some sets share a module
    got = grafted_forward(recipient, donors, rules, ids, mask)
    want = reference_forward(recipient, donors, ids, mask, rules)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4


def test_overlapping_head_grafts_are_not_the_later_one_alone() -> None:
    """Two head grafts in one layer at overlapping positions: where both claim, both heads are the
    donor's (not only the later graft's heads, which a plain later-wins rule would give)."""
    recipient, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask = batch(7)
    first, second = HeadGraft("ft", [(2, 0)], "0,1,2", "q+o"), HeadGraft("ft", [(2, 3)], "1,2,3", "q+o")
    got = grafted_forward(recipient, {"ft": donor}, [first, second], ids, mask)
    want = reference_forward(recipient, {"ft": donor}, ids, mask, [first, second])
    later_alone = grafted_forward(recipient, {"ft": donor}, [HeadGraft("ft", [(2, 3)], "0,1,2,3", "q+o")], ids, mask)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
    assert (got[real] - later_alone[real]).abs().max() > 1e-4


def test_a_later_head_graft_wins_across_donors(family: str) -> None:
    """[a, b, a] on one head: the last rule (donor a) computes it, as for component rules, though
    the third rule has the first one's donor, positions and parts (merging keeps rule order)."""
    recipient, a, b = make_tiny_model(family, 0), make_tiny_model(family, 1), make_tiny_model(family, 2)
    ids, mask = batch(3)
    donors = {"a": a, "b": b}
    rules = [HeadGraft("a", [(1, 0)], "LT", "q"), HeadGraft("b", [(1, 0)], "LT", "q"), HeadGraft("a", [(1, 0)], "LT", "q")]
    got = grafted_forward(recipient, donors, rules, ids, mask)
    want = reference_forward(recipient, donors, ids, mask, rules)
    last_alone = grafted_forward(recipient, donors, rules[2:], ids, mask)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
    assert (got[real] - last_alone[real]).abs().max() < 1e-5
    b_wins = grafted_forward(recipient, donors, rules[1:2], ids, mask)
    assert (got[real] - b_wins[real]).abs().max() > 1e-4  # the donors differ where it is read


def test_head_grafts_of_one_donor_and_positions_merge() -> None:
    recipient, donor = make_tiny_model("qwen2", 0), make_tiny_model("qwen2", 1)
    ids, mask = batch(6)
    apart = [HeadGraft("ft", [(2, 0)], "all"), HeadGraft("ft", [(2, 3)], "all")]
    together = [HeadGraft("ft", [(2, 0), (2, 3)], "all")]
    got = grafted_forward(recipient, {"ft": donor}, apart, ids, mask)
    want = grafted_forward(recipient, {"ft": donor}, together, ids, mask)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-6


@pytest.mark.parametrize("parts", ["q", "k+v"])
def test_a_head_graft_changes_only_its_heads_outputs(family: str, parts: str) -> None:
    """What picks a head's rows is checked on its own: grafting head 2 of layer 1 changes that
    head's output z (and, for k and v, the outputs of the query heads sharing its KV head) and
    no other head's, in that layer."""
    from graftlens import capture, grafting

    recipient, donor = as_loaded(make_tiny_model(family, 0)), make_tiny_model(family, 1)
    a = recipient.adapter
    group = a.n_heads // a.n_kv_heads
    ids, mask = batch(8)
    with capture(recipient, ["z.1"]) as plain:
        recipient.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask))
    with grafting(recipient, {"ft": donor}, [HeadGraft("ft", [(1, 2)], "all", parts)]), capture(recipient, ["z.1"]) as grafted:
        recipient.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask))
    real = mask.bool()
    changed = (grafted["z.1"] - plain["z.1"])[real].abs().amax(dim=(0, 2))  # [head]
    expected = {2} if parts == "q" else {h for h in range(a.n_heads) if h // group == 2 // group}
    if any(recipient.model.get_submodule(s.path).weight.dim() == 1 for s in a.sites("q", 1)):
        expected = set(range(a.n_heads))  # OLMo-2 normalises q and k over every head: one head's rows move them all
    assert {h for h in range(a.n_heads) if changed[h] > 1e-6} == expected
