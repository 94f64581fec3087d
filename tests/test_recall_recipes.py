"""Geva et al.'s enrichment, extraction-dependence and head-mapping recipes end to end on a tiny
llama with the shipped known facts: the stored rows equal the library's computation, mean
ablation stores its means, runs resume to the same rows, the report shows each method's figure
and tables, and bad input gets one clear line."""

from __future__ import annotations

import textwrap

import pytest
import torch
from typer.testing import CliRunner

from conftest import Interrupted, stopped_after
from graftlens.cli import app
from graftlens.data.known_facts import load_known_facts, tokenize_known_facts
from graftlens.eval import pad_id_of
from graftlens.eval.batching import batches
from graftlens.eval.scoring import score_logits
from graftlens.experiments import load_recipe, run_recipe
from graftlens.interventions import attention_knockout, capture, project
from graftlens.interventions.lens import last_index
from graftlens.interventions.mappings import head_mapping_vectors
from graftlens.interventions.sublayers import cancel_sublayers, sublayer_means
from graftlens.models import load_model
from graftlens.models.run import run_logits
from graftlens.positions import resolve_positions
from graftlens.results import load_run

runner = CliRunner()
BATCH = 64  # three batches of the 161 shipped facts


def _recipe(path, model_dir: str, sweep: str | list[str], metric: str = "top1", only_correct: bool = False):
    sweeps = "\n".join(f"  - {s}" for s in ([sweep] if isinstance(sweep, str) else sweep))
    path.write_text(
        textwrap.dedent(
            f"""\
            name: {path.stem}
            data: {{known_facts: shipped}}
            models:
              pre: {{spec: {model_dir}}}
            recipient: pre
            eval: {{batch_size: {BATCH}, bootstrap: 50, metric: {metric}, only_correct: {str(only_correct).lower()}}}
            sweeps:
            """
        )
        + sweeps
        + "\n"
    )
    return path


def _run(tmp_path, model_dir, name: str, sweep: str | list[str], metric: str = "top1"):
    recipe, path = load_recipe(_recipe(tmp_path / f"{name}.yaml", model_dir, sweep, metric))
    run_recipe(recipe, tmp_path / name, recipe_path=path)
    return load_run(tmp_path / name)


def _library(model_dir: str):
    """The tiny model and its known-fact batches, as the runner makes them."""
    model = load_model(model_dir)
    prompts = tokenize_known_facts(load_known_facts(), model.tokenizer)
    return model, list(batches(prompts, BATCH, pad_id_of(model.tokenizer)))


def _stored(run, config: str) -> dict[str, float]:
    return {r.example: r.target_prob for r in run.rows if r.config == config}


def _probs(logits: torch.Tensor, batch) -> dict[str, float]:
    return {s.id: s.target_prob for s in score_logits(logits, batch.prompts)}


def _at(hidden: torch.Tensor, batch, selector: str) -> torch.Tensor:
    where = last_index(resolve_positions(selector, batch.attention_mask, batch.spans))
    return hidden[torch.arange(hidden.shape[0]), where]


ENRICHMENT = "{kind: enrichment, window: 2, read_layer: 2, sublayers: [mlp, attn]}"


@pytest.fixture(scope="module")
def enrichment_run(tmp_path_factory, text_model_dir, graftlens_cache):
    return _run(tmp_path_factory.mktemp("enrichment"), text_model_dir, "run", ENRICHMENT, "attribute_rate")


def test_enrichment_rows_are_the_library_cancellation(enrichment_run, text_model_dir) -> None:
    run = enrichment_run
    assert len(run.configs) == 2 + 2 * 3 * 2  # nothing + 2 sublayers × starts 0..2, each read twice
    model, work = _library(text_model_dir)
    want_subject, want_last = {}, {}
    for batch in work:
        with cancel_sublayers(model, "mlp", [1, 2], "subject", through=True, spans=batch.spans):
            with capture(model, ["resid_post.2"]) as cache:
                logits = run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)[:, -1]
        want_subject |= _probs(project(model, _at(cache["resid_post.2"], batch, "subject")), batch)
        want_last |= _probs(logits, batch)
    name = "enrichment mlp L1-2 cancelled @ subject → L2"
    assert _stored(run, f"{name} subject") == pytest.approx(want_subject, abs=1e-6)
    assert _stored(run, f"{name} last") == pytest.approx(want_last, abs=1e-6)
    assert _stored(run, f"{name} subject") != pytest.approx(_stored(run, "enrichment nothing cancelled @ subject → L2 subject"))
    assert all("attribute_rate" in r.extra for r in run.rows)


def test_enrichment_report_draws_both_readouts(enrichment_run) -> None:
    from graftlens.report import write_report

    html = write_report(enrichment_run.run_dir).read_text()
    figures = sorted(p.name for p in (enrichment_run.run_dir / "figures").glob("*.png"))
    assert figures == ["00-sublayers-cancelled.png", "01-sublayers-cancelled-the-last-position-s-prediction.png"]
    assert "with nothing cancelled, and the lowest a window brings it to" in html


def test_mean_ablation_stores_the_means_it_used(tmp_path, text_model_dir, graftlens_cache) -> None:
    from safetensors.torch import load_file

    sweep = "{kind: enrichment, window: 1, read_layer: 1, sublayers: [attn], ablation: mean, answer: false}"
    run = _run(tmp_path, text_model_dir, "mean", sweep)
    model, work = _library(text_model_dir)
    inputs = [(b.input_ids, b.attention_mask, b.spans) for b in work]
    means = sublayer_means(model, inputs, "attn", range(4), "subject", through=True)
    stored = load_file(run.run_dir / "sublayer-means.safetensors")
    assert sorted(stored) == [f"pre/attn/{layer}" for layer in range(4)]
    for layer in range(4):
        torch.testing.assert_close(stored[f"pre/attn/{layer}"], means[layer])
    want = {}
    for batch in work:
        with cancel_sublayers(model, "attn", [0], "subject", through=True, spans=batch.spans, means=means):
            with capture(model, ["resid_post.1"]) as cache:
                run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)
        want |= _probs(project(model, _at(cache["resid_post.1"], batch, "subject")), batch)
    assert _stored(run, "enrichment attn L0-0 cancelled @ subject → L1 subject") == pytest.approx(want, abs=1e-6)


def test_extraction_rows_are_the_library_projection_under_each_condition(tmp_path, text_model_dir, graftlens_cache) -> None:
    sweep = "{kind: extraction, enrichment_layers: '0-1', relation_layers: half1}"
    run = _run(tmp_path, text_model_dir, "extraction", sweep)
    assert len(run.configs) == 3 * 2 * 4
    model, work = _library(text_model_dir)
    plain, cancelled, blocked = {}, {}, {}
    for batch in work:
        ids, mask = batch.input_ids, batch.attention_mask
        with capture(model, ["attn_out.3"]) as cache:
            run_logits(model, ids, mask, last_only=True)
        plain |= _probs(project(model, _at(cache["attn_out.3"], batch, "LT")), batch)
        with cancel_sublayers(model, "mlp", [0, 1], "subject", spans=batch.spans), capture(model, ["mlp_out.2"]) as cache:
            run_logits(model, ids, mask, last_only=True)
        cancelled |= _probs(project(model, _at(cache["mlp_out.2"], batch, "LT")), batch)
        with attention_knockout(model, [0, 1], sources="(subject+LT)^C", targets="LT", spans=batch.spans):
            with capture(model, ["attn_out.3"]) as cache:
                run_logits(model, ids, mask, last_only=True)
        blocked |= _probs(project(model, _at(cache["attn_out.3"], batch, "LT")), batch)
    assert _stored(run, "extraction attn_out @ LT @ L3") == pytest.approx(plain, abs=1e-6)
    assert _stored(run, "extraction mlp_out @ LT @ L2 | MLP L0-1 cancelled @ subject") == pytest.approx(cancelled, abs=1e-6)
    assert _stored(run, "extraction attn_out @ LT @ L3 | LT ↛ (subject+LT)^C @ Lhalf1") == pytest.approx(blocked, abs=1e-6)
    assert blocked != pytest.approx(plain)
    from graftlens.report import write_report

    html = write_report(run.run_dir).read_text()
    assert "facts with an extraction event by attention in some layer" in html and "last ↛ relation" in html


@pytest.fixture(scope="module")
def mapping_run(tmp_path_factory, text_model_dir, graftlens_cache):
    sweep = "{kind: head_mappings, layers: half2, top_k: 20}"
    return _run(tmp_path_factory.mktemp("mappings"), text_model_dir, "run", sweep)


def test_head_mapping_rows_are_the_library_maps(mapping_run, text_model_dir) -> None:
    run = mapping_run
    assert len(run.configs) == 2 + 2 * 2 * 4  # events of layers 2, 3; 2 sources × 2 layers × 4 heads
    model, work = _library(text_model_dir)
    want_hidden, want_embedding = {}, {}
    for batch in work:
        hidden = head_mapping_vectors(model, batch.input_ids, batch.attention_mask, [2, 3], "subject", spans=batch.spans)
        embedded = head_mapping_vectors(
            model, batch.input_ids, batch.attention_mask, [3], "subject", "embedding", spans=batch.spans
        )
        want_hidden |= _probs(project(model, hidden[:, 1, 2]), batch)
        want_embedding |= _probs(project(model, embedded[:, 0, 1]), batch)
    assert _stored(run, "head 3.2 maps subject (hidden)") == pytest.approx(want_hidden, abs=1e-6)
    assert _stored(run, "head 3.1 maps subject (embedding)") == pytest.approx(want_embedding, abs=1e-6)


def test_head_mapping_tables_count_events_and_mappings(mapping_run) -> None:
    from graftlens.methods.head_mappings import MappingTable

    run = mapping_run
    table = MappingTable.of(run, run.configs)
    assert table is not None and table.sources == ["hidden", "embedding"]
    events = table.event_list()
    by = {(c.name): rows for c, rows in ((c, run.by_config[c.name]) for c in run.configs)}
    expected = [(layer, r.example) for layer in (2, 3) for r in by[f"attention output @ LT @ L{layer}"] if r.target_rank == 1]
    assert events == expected
    mapped = table.mapped("hidden")
    assert mapped[(3, 2)] == {r.example for r in by["head 3.2 maps subject (hidden)"] if r.target_rank <= 20}
    summary = table.summary("g", run)
    assert [row[1][0] for row in summary.rows] == [len(events), len(events)]
    from graftlens.report import write_report

    html = write_report(run.run_dir).read_text()
    assert "heads whose map of the subject&#x27;s representation ranks the answer in the top 20" in html
    assert "head 3.2 maps subject" not in html  # head by head: a heat map and tables, not summary rows
    assert "<h2>All configurations</h2>" not in html and "<td class='text'>" in html
    result = runner.invoke(app, ["report", str(run.run_dir)])
    assert result.exit_code == 0 and "extraction events whose layer has a head" in result.output


def test_recall_runs_resume_to_the_same_rows(tmp_path, text_model_dir, mapping_run, graftlens_cache) -> None:
    recipe, path = load_recipe(_recipe(tmp_path / "r.yaml", text_model_dir, "{kind: head_mappings, layers: half2, top_k: 20}"))
    out = tmp_path / "run"
    for n in (4, 31):
        with stopped_after(n), pytest.raises(Interrupted):
            run_recipe(recipe, out, recipe_path=path)
    run_recipe(recipe, out, recipe_path=path)
    resumed = {(r.config, r.example): r.target_prob for r in load_run(out).rows}
    assert resumed == {(r.config, r.example): r.target_prob for r in mapping_run.rows}


@pytest.mark.parametrize(
    "sweep, message",
    [
        ("{kind: enrichment, window: 5}", "sweeps[1] (enrichment) window: a window of 5 layers is wider than model 'pre'"),
        ("{kind: enrichment, window: 2, read_layer: 4}", "read_layer: 4 is not a layer of model 'pre' (0..3, or -4..-1"),
        ("{kind: extraction, enrichment_layers: '0-6'}", "sweeps[1] (extraction) enrichment_layers: layer 4 out of range"),
        ("{kind: head_mappings, layers: [7]}", "sweeps[1] (head_mappings) layers: layer 7 out of range"),
        ("{kind: head_mappings, subject: movie}", "has no span 'movie'"),
        ("{kind: enrichment, sublayers: [ffn]}", "Input should be 'mlp' or 'attn'"),
    ],
)
def test_bad_recall_input_gets_one_clear_line(tmp_path, text_model_dir, graftlens_cache, sweep: str, message: str) -> None:
    path = _recipe(tmp_path / "bad.yaml", text_model_dir, sweep)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_no_fact_right_is_one_clear_line(tmp_path, text_model_dir, graftlens_cache) -> None:
    path = _recipe(tmp_path / "none.yaml", text_model_dir, ENRICHMENT, only_correct=True)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "gets none of the 161 prompts right" in result.output


def test_every_family_runs_the_three_steps(tmp_path, family, text_tokenizer, graftlens_cache) -> None:
    """One recipe with all three sweeps on each family's tiny model: every configuration scored,
    and a head's stored map equal to the library's."""
    from conftest import make_text_model

    model_dir = tmp_path / family
    model = make_text_model(family, text_tokenizer)
    model.resize_token_embeddings(len(text_tokenizer) + 16)  # room for tokens a family's tokenizer class adds (Qwen2)
    model.save_pretrained(model_dir)
    text_tokenizer.save_pretrained(model_dir)
    sweeps = [
        "{kind: enrichment, window: 2, read_layer: 1, sublayers: [mlp]}",
        "{kind: extraction, points: [attn_out], enrichment_layers: '0', relation_layers: '0-1'}",
        "{kind: head_mappings, layers: '3'}",
    ]
    run = _run(tmp_path, str(model_dir), "run", sweeps)
    assert len(run.rows) == run.expected_rows == len(run.configs) * 161
    model, work = _library(str(model_dir))
    want = {}
    for batch in work:
        vectors = head_mapping_vectors(
            model, batch.input_ids, batch.attention_mask, [3], "subject", "embedding", spans=batch.spans
        )
        want |= _probs(project(model, vectors[:, 0, 3]), batch)
    assert _stored(run, "head 3.3 maps subject (embedding)") == pytest.approx(want, abs=1e-6)
