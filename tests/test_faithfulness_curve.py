"""Faithfulness curves end to end on a tiny llama (no download): EAP and path-patching circuits of
growing size through the runner agree with the library, the whole model as a circuit is faithful,
the report draws the curve, and bad input is one error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from graftlens.cli import app
from graftlens.data.entity_tracking import make_pairs, mean_reference, tokenize_entity_tracking
from graftlens.eval.batching import batches, collate, pad_id_of
from graftlens.experiments import load_recipe
from graftlens.interventions.circuits import head_means, mean_ablated_logits
from graftlens.interventions.edge_circuits import edge_ablated_logits, edges_for_heads
from graftlens.interventions.edges import edge_attribution
from graftlens.interventions.faithfulness import faithfulness_curve, top_circuit
from graftlens.interventions.paths import PathInputs
from graftlens.methods.core.circuits import GroupSizes, proportional_sizes
from graftlens.models import load_model
from graftlens.results import load_run

runner = CliRunner()
SIZES = "{value_fetchers: 3, position_transmitters: 2, position_detectors: 2, structure_readers: 1}"


def _recipe(path: Path, model_dir: str, curve: str = "", circuit: bool = True) -> Path:
    et_circuit = textwrap.dedent(f"""\
          - kind: et_circuit
            plain: clean
            sizes: {SIZES}
            random: 0
            mean_prompts: 8
        """)
    curve = curve or textwrap.dedent(f"""\
          - kind: faithfulness_curve
            plain: clean
            sizes: [2, 8, 16]
            path_patching_sizes: {SIZES}
            random: 2
            mean_prompts: 8
        """)
    path.write_text(
        textwrap.dedent(f"""\
        name: tiny-faithfulness
        data: {{entity_tracking: {{boxes: [3], examples: 6, seed: 0, pairs: [corrupted]}}}}
        models:
          pre: {{spec: {model_dir}}}
        recipient: pre
        eval: {{batch_size: 4, bootstrap: 50, metric: top1}}
        configs:
          - {{name: clean, model: pre}}
        sweeps:
        """)
        + (et_circuit if circuit else "")
        + curve
    )
    return path


@pytest.fixture(scope="module")
def curve_run(tmp_path_factory, et_model_dir, graftlens_cache) -> Path:
    d = tmp_path_factory.mktemp("faithfulness")
    out = d / "run"
    result = runner.invoke(app, ["run", str(_recipe(d / "recipe.yaml", et_model_dir)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _pairs(model, n: int = 6):
    prompts = tokenize_entity_tracking(make_pairs(model.tokenizer, "corrupted", n, 3, 0, "test"), model.tokenizer)
    return prompts


def test_the_sweep_expands_every_ranking_size_and_random_draw(curve_run):
    run = load_run(curve_run)
    curve = [c for c in run.configs if c.kind == "faithfulness_curve"]
    # per size: eap_edges, eap_nodes, the EAP edge circuit, path patching at all and at group positions;
    # 2 random draws each at both
    assert len(curve) == 3 * (5 + 2 * 2) + 1  # and every head kept at the groups' positions, once
    assert all(len([r for r in run.rows if r.config == c.name]) == 6 for c in curve)


def test_stored_eap_circuits_agree_with_the_library(curve_run, et_model_dir):
    run = load_run(curve_run)
    model = load_model(et_model_dir)
    prompts = _pairs(model)
    pad = pad_id_of(model.tokenizer)
    total, n = None, 0
    for batch in batches(prompts, 4, pad):  # the runner's batches: the same order and sizes
        source = collate([p.meta["source"] for p in batch.prompts], pad)
        inputs = PathInputs(batch.input_ids, source.input_ids, batch.attention_mask, source.attention_mask)
        part = edge_attribution(model, inputs, batch.target_ids)
        total = part.scores * len(batch.prompts) if total is None else total + part.scores * len(batch.prompts)
        n += len(batch.prompts)
    from dataclasses import replace

    eap = replace(part, scores=total / n)
    from safetensors.torch import load_file

    kept = load_file(str(curve_run / "eap-scores.safetensors"))
    assert [tuple(h) for h in kept["pre/steps1/heads_by_edges"].tolist()] == eap.heads_by_edges()
    reference = tokenize_entity_tracking(mean_reference(model.tokenizer, 8, 3, 0, "test"), model.tokenizer)
    means = head_means(model, [(b.input_ids, b.attention_mask) for b in batches(reference, 32, pad)])
    circuit = top_circuit(eap.heads_by_edges(), 8)
    stored = {r.example: r.target_prob for r in run.rows if r.config == "faithfulness EAP (edges), all positions, 8 heads"}
    for batch in batches(prompts, 4, pad):
        logits = mean_ablated_logits(model, batch.input_ids, batch.attention_mask, circuit, means, batch.spans)
        for p, row, target in zip(batch.prompts, logits, batch.target_ids, strict=True):
            assert stored[p.id] == pytest.approx(float(row.float().softmax(-1)[target]), abs=1e-5)
    edges = edges_for_heads(eap, 8)
    assert 0 < len(edges.edges) < int(eap.valid.sum())
    stored = {r.example: r.target_prob for r in run.rows if r.config == "faithfulness EAP edge circuit, all positions, 8 heads"}
    for batch in batches(prompts, 4, pad):
        logits = edge_ablated_logits(model, batch.input_ids, batch.attention_mask, edges, means)
        for p, row, target in zip(batch.prompts, logits, batch.target_ids, strict=True):
            assert stored[p.id] == pytest.approx(float(row.float().softmax(-1)[target]), abs=1e-5)
    a = model.adapter
    sizes = kept["pre/steps1/edge_circuit/8"].tolist()
    assert sizes == [8, len(edges.edges), len(edges.heads(a.n_layers, a.n_heads, a.n_kv_heads))]


def test_the_whole_model_as_its_circuit_is_faithful(curve_run):
    run = load_run(curve_run)
    by_config = run.by_config
    full = [r.target_prob for r in by_config["clean"]]
    for name in (
        "faithfulness EAP (edges), all positions, 16 heads",
        "faithfulness EAP (nodes), all positions, 16 heads",
        "faithfulness path patching, all positions, 16 heads",
        "faithfulness random heads, all positions, 16 heads, seed 1",
    ):
        assert [r.target_prob for r in by_config[name]] == pytest.approx(full, abs=1e-5), name


def test_report_draws_the_curve_and_its_table(curve_run):
    result = runner.invoke(app, ["report", str(curve_run)])
    assert result.exit_code == 0, result.output
    html = (curve_run / "report.html").read_text()
    assert "faithfulness by circuit size" in html
    assert "EAP (edges), all positions" in html and "path patching, group positions" in html
    assert "path-patching heads among the first" in html and "by chance (expected)" in html
    assert "every head kept at the groups" in html
    assert "the EAP edge circuit at each size" in html and "heads in the circuit" in html
    assert any("faithfulness-curve" in p.name for p in (curve_run / "figures").glob("*.png"))


def test_library_curve_of_the_whole_model_is_one():
    from graftlens.models import tiny_model

    m = tiny_model("gpt_neox")
    ids = torch.randint(3, 90, (4, 6), generator=torch.Generator().manual_seed(0))
    from graftlens.models.run import run_logits

    target = run_logits(m, ids)[:, -1].argmax(-1)
    means = head_means(m, [(ids, None)])
    ranking = [(layer, h) for layer in range(4) for h in range(4)]
    curve = faithfulness_curve(m, ids, None, target, ranking, [1, 16], means, random=3)
    assert curve.full == 1.0 and curve.circuit[-1] == 1.0 and curve.random[-1] == (1.0, 1.0, 1.0)
    assert len(curve.random[0]) == 3


def test_proportional_sizes_add_up():
    sizes = GroupSizes(value_fetchers=20, position_transmitters=10, position_detectors=10, structure_readers=5)
    for total in (4, 9, 45, 90, 200):
        got = proportional_sizes(sizes, total)
        assert sum(got.values()) == total and min(got.values()) >= 1
    assert proportional_sizes(sizes, 45) == {
        "value_fetchers": 20,
        "position_transmitters": 10,
        "position_detectors": 10,
        "structure_readers": 5,
    }


@pytest.mark.parametrize(
    ("curve", "circuit", "message"),
    [
        ("- {kind: faithfulness_curve, plain: clean, sizes: [2, 8]}\n", False, "et_circuit sweep"),
        (
            "- {kind: faithfulness_curve, plain: clean, sizes: [8, 2], rankings: [eap_nodes], positions: [all]}\n",
            False,
            "increasing",
        ),
        ("- {kind: faithfulness_curve, plain: nope, sizes: [2], rankings: [eap_nodes], positions: [all]}\n", False, "plain"),
        ("- {kind: faithfulness_curve, plain: clean, sizes: [2], rankings: [eap_nodes]}\n", False, "positions 'groups'"),
        (
            "- {kind: faithfulness_curve, plain: clean, sizes: [2], path_patching_sizes: {value_fetchers: 9}}\n",
            True,
            "differ",
        ),
    ],
)
def test_bad_sweeps_are_one_error(tmp_path, et_model_dir, curve, circuit, message):
    with pytest.raises(Exception, match=message):
        load_recipe(_recipe(tmp_path / "r.yaml", et_model_dir, curve, circuit))


def test_a_size_beyond_the_model_is_refused_before_scoring(tmp_path, et_model_dir, graftlens_cache):
    curve = "- {kind: faithfulness_curve, plain: clean, sizes: [17], rankings: [eap_nodes], positions: [all]}\n"
    result = runner.invoke(
        app, ["run", str(_recipe(tmp_path / "r.yaml", et_model_dir, curve, False)), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "17" in result.output and "Traceback" not in result.output


def test_the_path_patching_circuit_grows_in_proportion_and_keeps_its_size():
    """Each stage's most negative heads; a transmitter is not also a fetcher, and the fetchers
    take their next head instead, so the circuit has exactly the size asked."""
    from graftlens.methods.core.circuits import GROUPS, discovered_circuit_of_size, stage_config_name

    n_layers, n_heads = 2, 4
    # stage scores: fetchers prefer heads (1, 0), (1, 1), (1, 2); transmitters prefer (1, 0)
    prefer = {
        "value_fetchers": [(1, 0), (1, 1), (1, 2)],
        "position_transmitters": [(1, 0), (0, 3)],
        "position_detectors": [(0, 1)],
        "structure_readers": [(0, 0)],
    }

    def results(names):
        out = {"clean": {"ex": 1.0}}
        for stage in GROUPS:
            for layer in range(n_layers):
                for head in range(n_heads):
                    rank = prefer[stage].index((layer, head)) if (layer, head) in prefer[stage] else 9
                    out[stage_config_name(stage, layer, head)] = {"ex": 0.1 * rank}
        return {n: out[n] for n in names}

    sizes = GroupSizes(value_fetchers=2, position_transmitters=1, position_detectors=1, structure_readers=1)
    circuit = discovered_circuit_of_size(results, "clean", sizes, 5, n_layers, n_heads)
    assert circuit.group("position_transmitters").heads == ((1, 0),)
    assert circuit.group("value_fetchers").heads == ((1, 1), (1, 2))  # (1, 0) is a transmitter
    assert circuit.group("position_detectors").heads == ((0, 1),) and circuit.group("structure_readers").heads == ((0, 0),)
    assert circuit.size == 5
    assert discovered_circuit_of_size(results, "clean", sizes, 10, n_layers, n_heads).size == 10
