"""The entity-tracking circuit recipes end to end on tiny llamas (no download): path patching
stage by stage through the runner agrees with the library, the circuit found is written for later
recipes, faithfulness and its tables, resume, and bad input."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_text_model, make_text_tokenizer
from graftlens.cli import app
from graftlens.data.entity_tracking import OBJECTS, make_pairs, tokenize_entity_tracking
from graftlens.eval.batching import collate, pad_id_of
from graftlens.experiments import load_recipe, run_recipe
from graftlens.interventions.circuits import Circuit
from graftlens.interventions.path_patching import PathInputs, path_patching
from graftlens.methods.circuits import stage_config_name
from graftlens.models import load_model
from graftlens.results import load_run

runner = CliRunner()


@pytest.fixture(scope="module")
def et_model_dir(tmp_path_factory) -> str:
    """A tiny llama whose tokenizer has every object and box label as one token."""
    texts = [
        " ".join(OBJECTS) * 3,
        " ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3,
        "The apple is in Box F, the key. Box contains the",
    ] * 20
    tokenizer = make_text_tokenizer(texts, vocab_size=400)
    path = tmp_path_factory.mktemp("et-llama")
    make_text_model("llama", tokenizer, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _circuit_recipe(path: Path, model_dir: str, extra: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""\
        name: tiny-et-circuit
        data: {{entity_tracking: {{boxes: [3], examples: 6, seed: 0}}}}
        models:
          pre: {{spec: {model_dir}}}
        recipient: pre
        eval: {{batch_size: 4, bootstrap: 50, metric: top1}}
        configs:
          - {{name: clean, model: pre}}
        sweeps:
          - kind: et_circuit
            clean: clean
            sizes: {{value_fetchers: 3, position_transmitters: 2, position_detectors: 2, structure_readers: 1}}
            random: 2
            mean_prompts: 8
        """) + extra)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def circuit_run(tmp_path_factory, et_model_dir, graftlens_cache) -> Path:
    d = tmp_path_factory.mktemp("et-circuit")
    recipe = _circuit_recipe(d / "recipe.yaml", et_model_dir)
    out = d / "run"
    result = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_circuit_run_scores_every_stage_and_head(circuit_run):
    run = load_run(circuit_run)
    kinds = [c.kind for c in run.configs]
    assert kinds.count("path_patching") == 4 * 4 * 4 and kinds.count("circuit") == 3
    assert len(run.rows) == len(run.configs) * 6


def test_stored_value_fetcher_scores_agree_with_the_library(circuit_run, et_model_dir):
    run = load_run(circuit_run)
    model = load_model(et_model_dir)
    prompts = tokenize_entity_tracking(make_pairs(model.tokenizer, "corrupted", 6, 3, 0, "test"), model.tokenizer)
    pad = pad_id_of(model.tokenizer)
    base, source = collate(prompts, pad), collate([p.meta["source"] for p in prompts], pad)
    inputs = PathInputs(base.input_ids, source.input_ids, base.attention_mask, source.attention_mask, base.spans, source.spans)
    library = path_patching(model, inputs, base.target_ids, receivers="logits", sender_positions="LT")
    by_config = run.by_config
    clean = {r.example: r.target_prob for r in by_config["clean"]}
    for layer in range(4):
        for head in range(4):
            rows = by_config[stage_config_name("value_fetchers", layer, head)]
            stored = sum((r.target_prob - clean[r.example]) / clean[r.example] for r in rows) / len(rows)
            assert stored == pytest.approx(float(library.scores[layer, head]), rel=1e-4, abs=1e-6)


def test_report_writes_the_circuit_heat_maps_and_faithfulness(circuit_run):
    result = runner.invoke(app, ["report", str(circuit_run)])
    assert result.exit_code == 0, result.output
    data = json.loads((circuit_run / "circuit.json").read_text())
    circuit = Circuit.from_json(data["groups"])
    assert list(circuit.groups) == ["value_fetchers", "position_transmitters", "position_detectors", "structure_readers"]
    assert [len(g.heads) for g in circuit.groups.values()][1:] == [2, 2, 1]
    assert not set(circuit.groups["value_fetchers"].heads) & set(circuit.groups["position_transmitters"].heads)
    figures = sorted(p.name for p in (circuit_run / "figures").glob("*.png"))
    assert sum("path-patching" in f for f in figures) == 4 and any("faithfulness" in f for f in figures)
    html = (circuit_run / "report.html").read_text()
    assert "faithfulness (÷ full model)" in html and "random circuits (mean of 2)" in html
    assert "path patching value_fetchers 0.0" not in html  # hundreds of heads: heat maps, not summary rows


def test_circuit_run_resumes_to_the_same_rows(tmp_path, et_model_dir, circuit_run):
    from graftlens.experiments.runner import Interrupted

    recipe, path = load_recipe(_circuit_recipe(tmp_path / "r.yaml", et_model_dir))
    out = tmp_path / "run"
    for n in (5, 23):
        with pytest.raises(Interrupted):
            run_recipe(recipe, out, recipe_path=path, stop_after_batches=n)
    run_recipe(recipe, out, recipe_path=path)
    resumed = {(r.config, r.example): r.target_prob for r in load_run(out).rows}
    whole = {(r.config, r.example): r.target_prob for r in load_run(circuit_run).rows}
    assert resumed == whole


def test_circuit_recipe_errors(tmp_path, et_model_dir):
    bad = _circuit_recipe(tmp_path / "a.yaml", et_model_dir).read_text().replace("clean: clean\n", "clean: nothing\n")
    (tmp_path / "a.yaml").write_text(bad)
    result = runner.invoke(app, ["run", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "clean 'nothing' must name a configuration without grafts" in result.output
    bad = _circuit_recipe(tmp_path / "b.yaml", et_model_dir).read_text().replace("boxes: [3]", "boxes: [1]")
    (tmp_path / "b.yaml").write_text(bad)
    result = runner.invoke(app, ["run", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "at least 2 boxes" in result.output
