"""Knockout, vocabulary projection and CMAP recipes, run end to end on tiny llamas (no download):
identities through the whole stack, agreement with the library, errors, figures and report."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from graftlens.cli import app
from graftlens.configfiles import ConfigFileError
from graftlens.data.known_facts import load_known_facts, tokenize_known_facts
from graftlens.eval import pad_id_of
from graftlens.eval.batching import batches
from graftlens.experiments import RecipeError, load_recipe, run_recipe
from graftlens.interventions import attention_knockout, knockout_edges
from graftlens.models import load_model, run_logits
from graftlens.positions import resolve_positions
from graftlens.results import load_run

runner = CliRunner()


def _recipe(text: str, path: Path) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def known_run(tmp_path_factory, text_model_dir, graftlens_cache) -> Path:
    d = tmp_path_factory.mktemp("known")
    recipe = _recipe(
        f"""\
        name: tiny-known
        data: {{known_facts: shipped}}
        models:
          pre: {{spec: {text_model_dir}}}
        recipient: pre
        eval: {{batch_size: 64, bootstrap: 100, metric: top10}}
        configs:
          - {{name: clean, model: pre}}
        sweeps:
          - kind: knockout
            baseline: clean
            window: 3
            sources: {{subject: subject, non-subject: (subject+LT)^C, last: LT}}
          - {{kind: lens, points: [attn_out, mlp_out, resid_post], position: LT}}
          - {{kind: lens, points: [resid_post], position: subject, panel: attribute}}
        """,
        d / "known.yaml",
    )
    out = d / "run"
    result = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_known_facts_run_stores_every_config_and_draws_curves(known_run):
    run = load_run(known_run)
    n_facts = len(load_known_facts())
    n_configs = 1 + 3 * 4 + 3 * 4 + 4
    assert len(run.configs) == n_configs
    assert len(run.rows) == n_configs * n_facts
    assert {r.template for r in run.rows} >= {"capital"}  # known facts are grouped by relation
    figures = sorted(p.name for p in (known_run / "figures").glob("*.png"))
    assert any("knockout" in f for f in figures) and any("lens" in f for f in figures) and any("attribute" in f for f in figures)
    html = (known_run / "report.html").read_text()
    assert "change in target probability (%) against clean" in html
    assert "knockout: layers 0,1, sources subject, targets LT" in html
    assert "knockout: layers 0–2, sources subject, targets LT" in html  # a run of layers


def test_stored_knockout_rows_match_the_library(known_run, text_model_dir):
    run = load_run(known_run)
    model = load_model(text_model_dir)
    prompts = tokenize_known_facts(load_known_facts(), model.tokenizer)
    batch = next(batches(prompts, 64, pad_id_of(model.tokenizer)))
    sources = resolve_positions("subject", batch.attention_mask, batch.spans)
    targets = resolve_positions("LT", batch.attention_mask, batch.spans)
    with attention_knockout(model, [0, 1], edges=knockout_edges(sources, targets)):  # window 3 centred on layer 0
        probs = run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)[:, -1].softmax(-1)
    stored = {r.example: r.target_prob for r in run.rows if r.config == "knockout subject @ L0"}
    for i, p in enumerate(batch.prompts):
        assert stored[p.id] == pytest.approx(float(probs[i, p.target_id]), abs=1e-6)


def test_projecting_the_last_residual_through_the_runner_gives_the_clean_rows(known_run):
    run = load_run(known_run)
    n = 4
    clean = {r.example: r for r in run.rows if r.config == "clean"}
    lens = {r.example: r for r in run.rows if r.config == f"lens resid_post @ LT @ L{n - 1}"}
    assert clean.keys() == lens.keys()
    for ex, r in lens.items():
        assert r.target_rank == clean[ex].target_rank
        assert r.target_prob == pytest.approx(clean[ex].target_prob, abs=1e-6)


def test_cmap_through_the_runner(tmp_path, text_model_dir, donor_dir, small_facts, graftlens_cache):
    data = small_facts.save(tmp_path / "facts")
    recipe = _recipe(
        f"""\
        name: tiny-cmap
        data: {{dir: {data}}}
        models:
          pre: {{spec: {text_model_dir}}}
          other: {{spec: {donor_dir}}}
        recipient: pre
        eval: {{batch_size: 4, bootstrap: 0}}
        configs:
          - {{name: PRE, model: pre}}
        sweeps:
          - {{kind: cmap, donor: pre, points: [[z, q, k, v]], panel: self}}
          - {{kind: cmap, donor: other, points: [[z], [v]], layers: [all, 1], positions: [all, LT]}}
        """,
        tmp_path / "cmap.yaml",
    )
    summary = run_recipe(load_recipe(recipe)[0], tmp_path / "run", recipe_path=recipe)
    run = load_run(tmp_path / "run")
    by = {}
    for r in run.rows:
        by.setdefault(r.config, {})[r.example] = r
    assert summary.n_configs == 1 + 1 + 2 * 2 * 2
    # The recipient patched with its own activations is the recipient, bit for bit.
    probs = {name: {e: r.target_prob for e, r in rows.items()} for name, rows in by.items()}
    assert probs["cmap z+q+k+v @ all @ all"] == probs["PRE"]
    # Another model's head outputs at every position of every layer change the predictions.
    moved = [e for e in by["PRE"] if by["cmap z @ all @ all"][e].target_prob != by["PRE"][e].target_prob]
    assert len(moved) == len(by["PRE"])


def test_method_recipe_errors(tmp_path, text_model_dir, donor_dir, small_facts):
    base = textwrap.dedent(f"""\
        name: bad
        data: {{known_facts: shipped}}
        models:
          pre: {{spec: {text_model_dir}}}
        recipient: pre
        configs:
          - {{name: clean, model: pre}}
        """)
    bad_baseline = _recipe(base + "sweeps: [{kind: knockout, baseline: cleen, sources: {s: subject}}]", tmp_path / "x.yaml")
    with pytest.raises(ConfigFileError, match="baseline 'cleen' must name a configuration without grafts"):
        load_recipe(bad_baseline)
    tuned = _recipe(base.replace("recipient: pre", "  sft: {finetune: {base: pre}}\nrecipient: pre"), tmp_path / "y.yaml")
    with pytest.raises(ConfigFileError, match="known facts have no training documents"):
        load_recipe(tuned)
    with pytest.raises(RecipeError, match="unknown span 'subjekt'|subjekt"):
        bad = _recipe(base + "sweeps: [{kind: knockout, baseline: clean, window: 3, sources: {s: subjekt}}]", tmp_path / "a.yaml")
        run_recipe(load_recipe(bad)[0], tmp_path / "a", recipe_path=bad)
    only = _recipe(base.replace("configs:", "eval: {only_correct: true}\nconfigs:"), tmp_path / "b.yaml")
    with pytest.raises(RecipeError, match="gets none of the 161 prompts right"):
        run_recipe(load_recipe(only)[0], tmp_path / "b", recipe_path=only)
    heads = _recipe(
        base.replace("pre: {spec", "other: {spec: " + donor_dir + "}\n  pre: {spec")
        + "sweeps: [{kind: cmap, donor: other, points: [[k]], heads: [3]}]",
        tmp_path / "c.yaml",
    )
    with pytest.raises(RecipeError, match=r"configuration 'cmap k @ all @ all': heads \[3\] out of range for 'k'"):
        run_recipe(load_recipe(heads)[0], tmp_path / "c", recipe_path=heads)


def test_shipped_method_recipes_expand():
    knock, _ = load_recipe("knockout")
    configs = knock.expanded(n_layers=30)
    assert len(configs) == 1 + 3 * 30
    centre = next(c for c in configs if c.name == "knockout subject @ L15")
    assert centre.method.layers == [13, 14, 15, 16, 17]
    assert len(load_recipe("extraction")[0].expanded(n_layers=30)) == 1 + 2 * 30
    assert len(load_recipe("attribute-rate")[0].expanded(n_layers=30)) == 1 + 3 * 30  # subject (both lenses), last
    assert len(load_recipe("cmap")[0].expanded(n_layers=30)) == 2 + 5 * 4 * 3


def test_knockout_recipe_relative_change_is_zero_without_blocking(tmp_path, text_model_dir):
    """A knockout whose sources are empty for every prompt (a span inside the subject, here the
    complement of everything) blocks nothing: its relative change is exactly 0."""
    recipe = _recipe(
        f"""\
        name: tiny-none
        data: {{known_facts: shipped}}
        models:
          pre: {{spec: {text_model_dir}}}
        recipient: pre
        eval: {{batch_size: 64, bootstrap: 0}}
        configs:
          - {{name: clean, model: pre}}
        sweeps:
          - {{kind: knockout, baseline: clean, window: 4, sources: {{nothing: all^C}}}}
        """,
        tmp_path / "none.yaml",
    )
    run_recipe(load_recipe(recipe)[0], tmp_path / "run", recipe_path=recipe)
    from graftlens.methods.knockout import knockout_table

    run = load_run(tmp_path / "run")
    table = knockout_table(run, [c for c in run.configs if c.method])
    assert table and all(e.value == 0.0 for e in table.values())
    assert torch.tensor([r.target_prob for r in run.rows]).isfinite().all()
