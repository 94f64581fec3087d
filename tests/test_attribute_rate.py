"""Geva et al.'s attribute rate: attribute sets from subject texts, the rate of a hand-built
projection, and the whole recipe path (store column, export, report) on a tiny model."""

from __future__ import annotations

import csv
import sqlite3
import textwrap

import pytest
import torch

from graftlens.data.attributes import STOPWORDS, attribute_token_ids, load_subject_texts
from graftlens.data.dataset import DatasetError
from graftlens.data.known_facts import load_known_facts, tokenize_known_facts
from graftlens.eval import pad_id_of
from graftlens.eval.batching import batches
from graftlens.eval.scoring import attribute_rate
from graftlens.experiments import load_recipe, run_recipe
from graftlens.interventions import point_logits
from graftlens.models import load_model
from graftlens.results import load_run
from graftlens.results.export import write_csv
from graftlens.results.metrics import estimate
from graftlens.results.store import ResultsStore


def test_rate_of_a_hand_built_projection() -> None:
    vocab, k = 100, 50
    logits = torch.zeros(2, vocab)
    logits[0, :k] = torch.linspace(2, 1, k)  # row 0: top 50 = tokens 0..49
    logits[1, 50:] = torch.linspace(2, 1, k)  # row 1: top 50 = tokens 50..99
    sets = [frozenset(range(10)) | {60, 70}, frozenset({0, 1, 60})]
    assert attribute_rate(logits, sets, k) == [10 / 50, 1 / 50]
    assert attribute_rate(logits, [frozenset(), frozenset(range(100))], k) == [0.0, 1.0]


class _WordTokenizer:
    """Words (with or without a leading space) are tokens; anything else is split in characters."""

    def __init__(self, words: list[str]):
        self.vocab = {w: i for i, w in enumerate(dict.fromkeys([*words, *(" " + w for w in words)]))}
        self.inverse = {i: w for w, i in self.vocab.items()}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if text in self.vocab:
            return [self.vocab[text]]
        out = []
        for ch in text:
            out.append(self.vocab.setdefault(ch, len(self.vocab)))
            self.inverse[self.vocab[ch]] = ch
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self.inverse[i] for i in ids)


def test_attribute_set_keeps_content_words_and_drops_stopwords_and_the_subject() -> None:
    tok = _WordTokenizer(["France", "Paris", "capital", "the", "is", "wine", "of"])
    got = {tok.decode([i]) for i in attribute_token_ids(tok, "The capital of France is Paris, known for wine.", "France")}
    assert got == {" Paris", "Paris", " capital", "capital", " wine", "wine"}
    assert "the" in STOPWORDS and "known" in STOPWORDS


def test_shipped_texts_cover_every_shipped_subject_and_bad_files_are_named(tmp_path) -> None:
    texts = load_subject_texts()
    assert {f.subject for f in load_known_facts()} <= set(texts)
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"id": "x", "relation": "capital", "subject": "Atlantis", "prompt": "Atlantis is", "target": " gone"}\n')
    with pytest.raises(DatasetError, match="put subject_texts.jsonl beside"):
        load_subject_texts(facts)
    (tmp_path / "subject_texts.jsonl").write_text('{"subject": "Atlantis"}\n')
    with pytest.raises(DatasetError, match="subject_texts.jsonl:1: expected the keys subject, text"):
        load_subject_texts(facts)


@pytest.fixture(scope="module")
def attribute_run(tmp_path_factory, text_model_dir, graftlens_cache):
    d = tmp_path_factory.mktemp("attr")
    recipe = d / "attr.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: tiny-attributes
            data: {{known_facts: shipped}}
            models:
              pre: {{spec: {text_model_dir}}}
            recipient: pre
            eval: {{batch_size: 256, bootstrap: 0, metric: attribute_rate}}
            configs:
              - {{name: clean, model: pre}}
            sweeps:
              - {{kind: lens, points: [resid_post], position: subject, panel: subject position}}
            """
        )
    )
    run_recipe(load_recipe(recipe)[0], d / "run", recipe_path=recipe)
    return d / "run"


def test_the_runner_stores_the_rate_of_each_projection(attribute_run, text_model_dir) -> None:
    run = load_run(attribute_run)
    model = load_model(text_model_dir)
    prompts = tokenize_known_facts(load_known_facts(), model.tokenizer)
    texts = load_subject_texts()
    batch = next(batches(prompts, 256, pad_id_of(model.tokenizer)))
    logits = point_logits(model, batch.input_ids, batch.attention_mask, ["resid_post.1"], "subject", spans=batch.spans)
    sets = [attribute_token_ids(model.tokenizer, texts[str(p.meta["subject"])], str(p.meta["subject"])) for p in batch.prompts]
    want = dict(zip([p.id for p in batch.prompts], attribute_rate(logits["resid_post.1"], sets)))
    stored = {r.example: r.extra["attribute_rate"] for r in run.rows if r.config == "lens resid_post @ subject @ L1"}
    assert stored == pytest.approx(want, abs=1e-9)
    assert all(0.0 <= r.extra["attribute_rate"] <= 1.0 for r in run.rows)
    assert any(r.extra["attribute_rate"] > 0 for r in run.rows)  # the comparisons above are not all zeros
    assert estimate(run.rows, "attribute_rate", 0).value == pytest.approx(
        sum(r.extra["attribute_rate"] for r in run.rows) / len(run.rows)
    )
    assert run.manifest["data"]["subject_texts"] == "subject_texts.jsonl (shipped)"


def test_the_rate_is_exported_and_drawn(attribute_run, tmp_path) -> None:
    run = load_run(attribute_run)
    write_csv(run, tmp_path / "out.csv")
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0].keys() >= {"attribute_rate", "top10"} and float(rows[0]["attribute_rate"]) >= 0
    from graftlens.report import write_report

    html = write_report(attribute_run).read_text()
    assert "attribute rate (top-50)" in html


def test_a_store_without_the_extra_column_still_opens(tmp_path) -> None:
    """Stores written before the attribute rate existed get the column and read as no extras."""
    path = tmp_path / "results.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE configs (run TEXT NOT NULL, name TEXT NOT NULL, position INTEGER NOT NULL, grp TEXT NOT NULL,"
        " spec TEXT NOT NULL, PRIMARY KEY (run, name));"
        "CREATE TABLE results (run TEXT NOT NULL, config TEXT NOT NULL, example TEXT NOT NULL, template TEXT NOT NULL,"
        " direction TEXT NOT NULL, prompt TEXT NOT NULL, target TEXT NOT NULL, target_prob REAL NOT NULL,"
        " target_rank INTEGER NOT NULL, top_tokens TEXT NOT NULL, PRIMARY KEY (run, config, example));"
        "INSERT INTO configs VALUES ('r', 'c', 0, 'g', '{}');"
        """INSERT INTO results VALUES ('r', 'c', 'e', 't', 'd', 'p', ' x', 0.5, 2, '[" x"]');"""
    )
    conn.commit()
    conn.close()
    with ResultsStore(path) as store:
        (row,) = store.rows("r")
    assert row.target_rank == 2 and row.extra == {}


def test_answer_rate_of_a_hand_built_projection() -> None:
    """The answer rate (the old measure) is a top-10 hit of the fact's own answer: rank 10 counts, 11 not."""
    from graftlens.data.prompts import TokenizedPrompt
    from graftlens.results.metrics import METRICS
    from graftlens.results.store import ResultRow

    logits = torch.linspace(5, 0, 100).repeat(2, 1)  # token i has rank i + 1 in both rows
    prompts = [TokenizedPrompt(f"p{i}", "", " x", (1,), (target,), {}) for i, target in enumerate([9, 10])]
    from graftlens.eval.scoring import score_logits

    scores = score_logits(logits, prompts)
    assert [s.target_rank for s in scores] == [10, 11]
    rows = [ResultRow("c", s.id, "t", "d", "", "", s.target_prob, s.target_rank, ()) for s in scores]
    assert [METRICS["top10"](r) for r in rows] == [1.0, 0.0]
