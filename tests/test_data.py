"""New-fact datasets, templates, span annotation, known facts and entity tracking."""

from __future__ import annotations

import json
import re

import pytest

from graftlens.data.dataset import DatasetError, build_dataset, load_dataset, tokenize_test
from graftlens.data.entity_tracking import make_entity_tracking, tokenize_entity_tracking
from graftlens.data.facts import FactError, generate_facts, real_actor_names
from graftlens.data.known_facts import load_known_facts, tokenize_known_facts
from graftlens.data.prompts import TokenizerMismatchError, check_tokenizer_fits
from graftlens.data.spans import SpanError
from graftlens.data.templates import (
    ARTICLE_TEMPLATES,
    DEFAULT_TEMPLATES,
    QA_TEMPLATES,
    TEST_TEMPLATES,
    Template,
    TemplateError,
    check_template_sets,
    templates_from_records,
)


@pytest.mark.parametrize("kind", ["fake_actors", "real_actors"])
def test_same_seed_gives_byte_identical_files(tmp_path, kind):
    a = build_dataset(kind, 12, seed=3).save(tmp_path / "a")
    b = build_dataset(kind, 12, seed=3).save(tmp_path / "b")
    c = build_dataset(kind, 12, seed=4).save(tmp_path / "c")
    for name in ("facts.jsonl", "train.jsonl", "test.jsonl", "dataset.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "facts.jsonl").read_bytes() != (c / "facts.jsonl").read_bytes()


@pytest.mark.parametrize("kind", ["fake_actors", "real_actors"])
def test_actor_names_unique_in_first_and_last_name(kind):
    facts = generate_facts(kind, 60, seed=1)
    names = [n for f in facts for n in (f.first_actor, f.second_actor)]
    firsts = [n.split()[0] for n in names]
    lasts = [n.split()[-1] for n in names]
    assert len(set(firsts)) == len(names) and len(set(lasts)) == len(names)
    if kind == "real_actors":
        assert set(names) <= set(real_actor_names())


def test_real_actor_list_is_long_and_has_no_duplicates():
    names = real_actor_names()
    assert len(names) >= 300
    assert len(set(names)) == len(names)


def test_splits_are_disjoint_halves(small_facts):
    a = {f.id for f in small_facts.facts if f.split == "A"}
    b = {f.id for f in small_facts.facts if f.split == "B"}
    assert a and b and not a & b and len(a) + len(b) == len(small_facts.facts)
    assert {t.fact_id for t in small_facts.train if t.split == "A"} == a
    assert {e.fact_id for e in small_facts.test_examples("B")} == b


def test_both_directions_present(small_facts):
    f = small_facts.facts[0]
    forward = small_facts.test_examples(template="test_alongside", direction="forward")[0]
    backward = small_facts.test_examples(template="test_alongside", direction="backward")[0]
    assert forward.prompt.startswith(f.first_actor) and forward.target == " " + f.second_actor
    assert backward.prompt.startswith(f.second_actor) and backward.target == " " + f.first_actor


def test_template_counts_and_required_test_templates():
    assert len(ARTICLE_TEMPLATES) >= 6 and len(QA_TEMPLATES) >= 5 and len(TEST_TEMPLATES) >= 3
    texts = {t.text for t in TEST_TEMPLATES}
    assert "{first_actor} stars in a movie alongside" in texts
    assert "Q: Who stars in a movie with {first_actor}? A: An actor named" in texts
    check_template_sets(DEFAULT_TEMPLATES)


def test_no_doubled_words_and_no_test_prompt_in_training_text():
    data = build_dataset("real_actors", 40, seed=5)
    doubled = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)
    train = [t.text for t in data.train]
    for text in train + [e.prompt for e in data.test]:
        assert not doubled.search(text), text
    for e in data.test:
        assert not any(e.prompt in t for t in train), e.prompt


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (Template("bad_slot", "qa", "{first_actor} met {second_actor} in {planet}."), "unknown slot"),
        (Template("leaks", "test", "{first_actor} and {second_actor} star in"), "must not contain the target"),
        (Template("no_target", "article", "{first_actor} stars in {title}."), "must mention {second_actor}"),
        (Template("broken", "qa", "{first_actor co-stars with {second_actor}"), "malformed"),
        (Template("trailing", "test", "{first_actor} stars with "), "whitespace"),
        (Template("odd", "poem", "{first_actor} {second_actor}"), "kind"),
    ],
)
def test_bad_templates_name_the_template(template, message):
    with pytest.raises(TemplateError, match=message) as info:
        check_template_sets((template,))
    assert template.name in str(info.value)


def test_test_template_equal_to_training_one_is_refused():
    t = [Template("a", "qa", "{first_actor} works with {second_actor}"), Template("t", "test", "{first_actor} works with")]
    with pytest.raises(TemplateError, match="word for word"):
        check_template_sets(t)


def test_doubled_word_from_slot_filling_is_refused():
    t = Template("dup", "qa", "The film {title} film stars {first_actor} with {second_actor}.")
    with pytest.raises(TemplateError, match="doubled word"):
        t.render({"title": "Film", "first_actor": "A B", "second_actor": "C D"})


def test_template_file_records_errors_name_the_file():
    with pytest.raises(TemplateError, match="my.yaml.*lacks text"):
        templates_from_records([{"name": "x", "kind": "qa"}], "my.yaml")


def test_load_dataset_round_trip_and_errors(tmp_path, small_facts):
    d = small_facts.save(tmp_path / "ds")
    again = load_dataset(d)
    assert again.test == small_facts.test and again.train == small_facts.train and again.facts == small_facts.facts
    with pytest.raises(DatasetError, match="dataset.json is missing"):
        load_dataset(tmp_path / "nothing")
    lines = (d / "train.jsonl").read_text().splitlines()
    (d / "train.jsonl").write_text("\n".join([lines[0].replace("stars", "STARS")] + lines[1:]) + "\n")
    with pytest.raises(DatasetError, match="edited after it was made"):
        load_dataset(d)
    (d / "train.jsonl").write_text("")
    with pytest.raises(DatasetError, match="empty: train.jsonl"):
        load_dataset(d)
    (d / "facts.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match=r"facts.jsonl:1: not valid JSON"):
        load_dataset(d)
    (d / "facts.jsonl").write_text(json.dumps({"id": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"facts.jsonl:1: expected the keys"):
        load_dataset(d)


def test_too_many_real_actors_is_an_error():
    with pytest.raises(FactError, match="lower the fact count"):
        generate_facts("real_actors", 500)
    with pytest.raises(FactError, match="unknown fact kind"):
        generate_facts("cartoons", 3)


def _check_spans(prompts, tokenizer, small_facts):
    facts = {f.id: f for f in small_facts.facts}
    for p in prompts:
        fe = facts[p.meta["fact_id"]].slot_values(p.meta["direction"])["first_actor"]
        s, e = p.spans["FE"]
        assert tokenizer.decode(p.input_ids[s:e]).strip() == fe
        if "title" in p.spans:
            s, e = p.spans["title"]
            assert tokenizer.decode(p.input_ids[s:e]).strip() == facts[p.meta["fact_id"]].title
        assert p.spans["LT"] == (len(p.input_ids) - 1, len(p.input_ids))
        assert tokenizer.decode(p.target_ids) == p.target
        assert p.target_id == p.target_ids[0]


def test_spans_and_targets_on_a_bpe_tokenizer(small_facts, text_tokenizer):
    prompts = tokenize_test(small_facts.test, text_tokenizer)
    assert len(prompts) == len(small_facts.test)
    _check_spans(prompts, text_tokenizer, small_facts)


@pytest.mark.embedded
def test_spans_and_targets_on_the_embedded_tokenizer(small_facts, embedded):
    _check_spans(tokenize_test(small_facts.test, embedded.tokenizer), embedded.tokenizer, small_facts)


def test_entity_absent_from_prompt_names_the_example(small_facts, text_tokenizer):
    bad = small_facts.test[0]
    broken = type(bad)(**{**bad.__dict__, "char_spans": {"FE": (0, 10_000)}})
    with pytest.raises(SpanError, match=re.escape(bad.id)):
        tokenize_test([broken], text_tokenizer)


def test_tokenizer_bigger_than_model_vocabulary_is_refused(text_tokenizer):
    from conftest import make_tiny_model

    with pytest.raises(TokenizerMismatchError, match="do not belong together"):
        check_tokenizer_fits(make_tiny_model("llama"), text_tokenizer)


def test_known_facts_file_and_spans(text_tokenizer, tmp_path):
    facts = load_known_facts()
    assert len(facts) >= 150 and len({f.id for f in facts}) == len(facts)
    assert len({f.relation for f in facts}) >= 6
    prompts = tokenize_known_facts(facts, text_tokenizer)
    for f, p in zip(facts, prompts):
        s, e = p.spans["subject"]
        assert text_tokenizer.decode(p.input_ids[s:e]).strip() == f.subject
    bad = tmp_path / "kf.jsonl"
    bad.write_text(
        json.dumps({"id": "x", "relation": "r", "subject": "Mars", "prompt": "The capital of France is", "target": " Paris"})
    )
    with pytest.raises(DatasetError, match="subject 'Mars' of 'x' is not in its prompt"):
        load_known_facts(bad)


def test_entity_tracking_is_seeded_and_consistent(text_tokenizer):
    from conftest import make_text_tokenizer
    from graftlens.data.entity_tracking import OBJECTS

    tokenizer = make_text_tokenizer([" ".join(OBJECTS) * 3, " ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3] * 20, vocab_size=400)
    a = make_entity_tracking(tokenizer, 20, n_boxes=5, seed=1)
    assert a == make_entity_tracking(tokenizer, 20, n_boxes=5, seed=1)
    assert a != make_entity_tracking(tokenizer, 20, n_boxes=5, seed=2)
    for ex, p in zip(a, tokenize_entity_tracking(a, tokenizer)):
        query = ex.prompt[slice(*ex.char_spans["query_box"])]
        assert ex.target == " " + ex.boxes[query]
        assert len(p.target_ids) == 1
        s, e = p.spans["correct_box"]
        assert tokenizer.decode(p.input_ids[s:e]).strip() == query
        s, e = p.spans["correct_object"]
        assert tokenizer.decode(p.input_ids[s:e]).strip() == ex.boxes[query]
    with pytest.raises(DatasetError, match="single-token"):
        make_entity_tracking(text_tokenizer, 3, n_boxes=5)


def _letters_tokenizer():
    from conftest import make_text_tokenizer
    from graftlens.data.entity_tracking import OBJECTS

    return make_text_tokenizer([" ".join(OBJECTS) * 3, " ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3] * 20, vocab_size=400)


def test_entity_tracking_pairs_follow_their_definitions():
    from graftlens.data.entity_tracking import make_pairs, mean_reference, vocabulary

    tokenizer = _letters_tokenizer()
    train, test = vocabulary(tokenizer, "train"), vocabulary(tokenizer, "test")
    assert not set(train.objects) & set(test.objects) and not set(train.labels) & set(test.labels)
    assert len(test.labels) >= 8

    def scene(ex):
        query = ex.prompt[slice(*ex.char_spans["query_box"])]
        return ex.boxes, query, ex.query_index, list(ex.boxes)

    for kind in ("corrupted", "position", "object", "box_label"):
        pairs = make_pairs(tokenizer, kind, 30, n_boxes=4, seed=3, half="test")
        assert pairs == make_pairs(tokenizer, kind, 30, n_boxes=4, seed=3, half="test")
        prompts = tokenize_entity_tracking(pairs, tokenizer)
        assert len({len(p.input_ids) for p in prompts} | {len(p.meta["source"].input_ids) for p in prompts}) == 1
        for ex, p in zip(pairs, prompts):
            boxes, query, qi, labels = scene(ex)
            s_boxes, s_query, s_qi, s_labels = scene(ex.source)
            assert set(boxes.values()) <= set(test.objects) and set(labels) <= set(test.labels)
            assert len(set(s_labels)) == 4 and len(p.target_ids) == 1
            assert p.meta["template"] == ("4 boxes" if kind == "corrupted" else kind)
            if kind == "corrupted":
                assert s_query not in s_labels and s_qi != qi and ex.target == " " + boxes[query]
            elif kind == "position":
                assert s_qi != qi and ex.target == " " + boxes[labels[s_qi]]
            elif kind == "object":
                assert s_qi != qi and ex.target == " " + s_boxes[s_query]
            else:
                assert s_query in labels and s_query != query and ex.target == " " + boxes[s_query]
                assert s_labels[s_qi] == s_query
    for ex in mean_reference(tokenizer, 10, 4, half="test"):
        assert scene(ex)[1] not in scene(ex)[3]
    with pytest.raises(DatasetError, match="unknown entity-tracking pair kind 'shuffle'"):
        make_pairs(tokenizer, "shuffle", 3)


def test_large_fake_actor_datasets_draw_from_more_english_names_and_small_ones_are_unchanged() -> None:
    """Beyond en_US's 345 facts, names come from the English locales together (600 facts here):
    every first and every last name still used once, each a single plain word. Datasets that fit
    en_US are exactly what they were (pinned), so cached datasets and results stay valid."""
    import dataclasses
    import hashlib
    import json

    from graftlens.data.facts import FactError, fake_actor_capacity, generate_facts

    def digest(n: int) -> str:
        facts = [dataclasses.asdict(f) for f in generate_facts("fake_actors", n, 0)]
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]

    assert digest(12) == "571d10f7a28ace16" and digest(345) == "93a41aae2adc2a2d"
    facts = generate_facts("fake_actors", 600, 0)
    names = [n for f in facts for n in (f.first_actor, f.second_actor)]
    firsts, lasts = [n.split()[0] for n in names], [n.split()[-1] for n in names]
    assert len(set(firsts)) == len(set(lasts)) == 1200
    assert all(len(n.split()) == 2 and n.replace(" ", "").isalpha() and n.isascii() for n in names)
    assert len({f.title for f in facts}) == 600
    with pytest.raises(FactError, match=f"at most {fake_actor_capacity()}"):
        generate_facts("fake_actors", fake_actor_capacity() + 1, 0)
