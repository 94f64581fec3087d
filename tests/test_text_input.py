"""Text in: ``graftlens.prompts`` makes one left-padded ``Prompts`` batch from strings with marked
or named spans and string targets; every entry point that takes token ids takes it (its mask,
spans and targets come along) or plain text, with the same numbers as the tensor path."""

from __future__ import annotations

import pytest
import torch

import graftlens
from graftlens import Graft, PathInputs, Prompts
from graftlens.data.spans import SpanError, unmark
from graftlens.errors import GraftlensError
from graftlens.models import tiny_model

TEXTS = ["[FE:Lori Barker] stars in a movie alongside", "[FE:Ann Li] stars alongside"]


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", 0), tiny_model("llama", 1)


def test_marked_spans_named_spans_and_targets(pair) -> None:
    m, _ = pair
    batch = graftlens.prompts(m, TEXTS, targets=[" Gregory", " Bo"])
    assert isinstance(batch, Prompts) and len(batch) == 2
    assert [p.prompt for p in batch.prompts] == ["Lori Barker stars in a movie alongside", "Ann Li stars alongside"]
    assert batch.spans[0]["FE"] == (0, 11) and batch.spans[1]["FE"] == (0, 6)
    assert batch.spans[0]["LT"] == (37, 38) and batch.spans[1]["LT"] == (21, 22)  # prompt coordinates (a char each)
    assert bool((batch.attention_mask[:, -1] == 1).all())  # left-padded: every last column is a token
    assert batch.target_ids.tolist() == [m.tokenizer(" ")["input_ids"][0]] * 2
    named = graftlens.prompts(m, ["Lori Barker stars in", "Ann Li stars"], spans=[{"FE": "Lori Barker"}, {"FE": "Ann Li"}])
    assert [s["FE"] for s in named.spans] == [(0, 11), (0, 6)] and named.target_ids is None
    one = graftlens.prompts(m.tokenizer, "The [relation:capital] of France is", targets=" Paris")
    assert one.spans[0]["relation"] == (4, 11)


@pytest.mark.parametrize(
    ("texts", "kwargs", "message"),
    [
        (["[FE:Lori Barker stars"], {}, "not closed"),
        (["[FE:Ann] and [FE:Bo]"], {}, "marked twice"),
        (["Ann stars"], {"spans": {"FE": "Bo"}}, "'Bo' is not in the text"),
        (["[FE:Ann] stars"], {"spans": {"FE": "Ann"}}, "both marked and given"),
        (["a", "b"], {"targets": [" x"]}, "targets has 1 entries for 2 texts"),
        ([], {}, "at least one text"),
    ],
)
def test_bad_text_is_one_error_naming_it(pair, texts, kwargs, message) -> None:
    with pytest.raises(SpanError, match=message):
        graftlens.prompts(pair[0], texts, **kwargs)


def test_unmark_keeps_the_rest_of_the_text() -> None:
    assert unmark("no marks [here] at all") == ("no marks [here] at all", {})
    assert unmark("[A:x] and [B:y z]") == ("x and y z", {"A": (0, 1), "B": (6, 9)})


def test_entry_points_take_prompts_and_text_like_tensors(pair) -> None:
    m, d = pair
    batch = graftlens.prompts(m, TEXTS, targets=[" G", " B"])
    ids, mask, spans, targets = batch.input_ids, batch.attention_mask, batch.spans, batch.target_ids
    torch.testing.assert_close(graftlens.run_logits(m, batch, last_only=True), graftlens.run_logits(m, ids, mask, last_only=True))
    plain = graftlens.run_logits(m, [p.prompt for p in batch.prompts], last_only=True)
    torch.testing.assert_close(plain, graftlens.run_logits(m, ids, mask, last_only=True))
    rules = [Graft("d", "all", "all", "FE+LT")]
    torch.testing.assert_close(
        graftlens.grafted_forward(m, {"d": d}, rules, batch, last_only=True),
        graftlens.grafted_forward(m, {"d": d}, rules, ids, mask, spans, last_only=True),
    )
    swept = graftlens.graft_sweep(m, {"d": d}, {"FE+LT": rules}, batch)["FE+LT"]
    torch.testing.assert_close(swept, graftlens.graft_sweep(m, {"d": d}, {"FE+LT": rules}, ids, mask, spans=spans)["FE+LT"])
    corrupted = graftlens.prompts(m, ["[FE:Tom Jenkins] stars in a movie alongside", "[FE:Bob Yu] stars alongside"])
    by_prompts = graftlens.activation_patching(m, batch, corrupted)  # targets come with the clean prompts
    by_tensors = graftlens.activation_patching(m, ids, corrupted.input_ids, targets, attention_mask=mask)
    torch.testing.assert_close(by_prompts.scores, by_tensors.scores)
    inputs = PathInputs.of(batch, corrupted)
    torch.testing.assert_close(
        graftlens.path_patching(m, inputs, targets).scores,
        graftlens.path_patching(m, PathInputs(ids, corrupted.input_ids, mask, corrupted.attention_mask), targets).scores,
    )


def test_path_patching_and_edge_attribution_take_a_pair_of_prompts(pair) -> None:
    """``inputs=(clean, corrupted)``: the pair is made into `PathInputs` and the clean prompts'
    targets fill ``target_ids``; the numbers are the tensor path's."""
    m, _ = pair
    clean = graftlens.prompts(m, ["[FE:Ann] stars in", "[FE:Bo] stars a"], targets=[" a", " b"])
    corrupted = graftlens.prompts(m, ["[FE:Cyd] stars in", "[FE:Di] stars a"])
    inputs, targets = PathInputs.of(clean, corrupted), clean.target_ids
    pair_of = (clean, corrupted)
    torch.testing.assert_close(graftlens.path_patching(m, pair_of).scores, graftlens.path_patching(m, inputs, targets).scores)
    torch.testing.assert_close(
        graftlens.edge_attribution(m, pair_of).scores, graftlens.edge_attribution(m, inputs, targets).scores
    )
    torch.testing.assert_close(
        graftlens.path_patched_logits(m, pair_of, (1, 2)), graftlens.path_patched_logits(m, inputs, (1, 2))
    )
    torch.testing.assert_close(
        graftlens.edge_patched_logits(m, pair_of, (1, 2), "logits"), graftlens.edge_patched_logits(m, inputs, (1, 2), "logits")
    )
    for bad in [(clean, corrupted.input_ids), (clean,), [clean, corrupted, clean]]:
        with pytest.raises(GraftlensError, match=r"a \(clean, corrupted\) pair of Prompts"):
            graftlens.path_patching(m, bad, targets)


def test_misaligned_corrupted_prompts_and_missing_targets_are_one_error(pair) -> None:
    m, _ = pair
    clean = graftlens.prompts(m, ["Ann stars in", "Bo stars"], targets=[" a", " b"])
    shorter = graftlens.prompts(m, ["Ann stars", "Bo stars"])
    with pytest.raises(GraftlensError, match="padded differently"):
        graftlens.activation_patching(m, clean, shorter)
    with pytest.raises(TypeError, match="missing required argument: target_ids"):
        graftlens.activation_patching(m, shorter, shorter)
    with pytest.raises(GraftlensError, match="no tokenizer"):
        graftlens.run_logits(m.model, "text needs a tokenizer")


def test_a_tiny_model_saves_and_loads_with_its_tokenizer(tmp_path) -> None:
    m = tiny_model("gpt2", seed=3)
    again = graftlens.load_model(m.save(tmp_path / "tiny"))
    batch = graftlens.prompts(again, TEXTS)
    torch.testing.assert_close(graftlens.run_logits(m, batch), graftlens.run_logits(again, batch))
