"""The entity-tracking circuit recipes end to end on tiny llamas (no download): path patching
stage by stage through the runner agrees with the library, the circuit found is written for later
recipes, faithfulness and its tables, resume, and bad input."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import Interrupted, make_text_model, make_text_tokenizer, stopped_after
from graftlens.cli import app
from graftlens.data.entity_tracking import OBJECTS, make_pairs, tokenize_entity_tracking
from graftlens.eval.batching import collate, pad_id_of
from graftlens.experiments import load_recipe, run_recipe
from graftlens.interventions.circuits import Circuit
from graftlens.interventions.paths import PathInputs, path_patching
from graftlens.methods.core.circuits import stage_config_name
from graftlens.models import load_model
from graftlens.results import load_run

runner = CliRunner()


def _pairs(model, kind: str, n: int):
    """The recipes' 3-box pairs of ``kind`` (seed 0, test half): prompts, the base batch, and the inputs."""
    prompts = tokenize_entity_tracking(make_pairs(model.tokenizer, kind, n, 3, 0, "test"), model.tokenizer)
    pad = pad_id_of(model.tokenizer)
    base, source = collate(prompts, pad), collate([p.meta["source"] for p in prompts], pad)
    return (
        prompts,
        base,
        PathInputs(base.input_ids, source.input_ids, base.attention_mask, source.attention_mask, base.spans, source.spans),
    )


def _circuit_recipe(path: Path, model_dir: str, extra: str = "") -> Path:
    path.write_text(
        textwrap.dedent(f"""\
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
            plain: clean
            sizes: {{value_fetchers: 3, position_transmitters: 2, position_detectors: 2, structure_readers: 1}}
            random: 2
            mean_prompts: 8
        """)
        + extra
    )
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
    prompts, base, inputs = _pairs(model, "corrupted", 6)
    library = path_patching(model, inputs, base.target_ids, receivers="logits", sender_positions="LT")
    by_config = run.by_config
    clean = {r.example: r.target_prob for r in by_config["clean"]}
    for layer in range(4):
        for head in range(4):
            rows = by_config[stage_config_name("value_fetchers", layer, head)]
            stored = sum((r.target_prob - clean[r.example]) / clean[r.example] for r in rows) / len(rows)
            assert stored == pytest.approx(float(library.scores[layer, head]), rel=1e-4, abs=1e-6)


def test_stored_later_stages_agree_with_the_library(circuit_run, et_model_dir):
    """Each stage's receivers are the heads the stage before picked, read at the sender's column."""
    from graftlens.interventions.paths import Receiver
    from graftlens.methods.core.circuits import discovered_circuit

    run = load_run(circuit_run)
    by_config = run.by_config
    model = load_model(et_model_dir)
    prompts, base, inputs = _pairs(model, "corrupted", 6)

    def results(names):
        return {n: {r.example: r.target_prob for r in by_config[n]} for n in names}

    from graftlens.methods.core.circuits import GroupSizes

    sizes = GroupSizes(value_fetchers=3, position_transmitters=2, position_detectors=2, structure_readers=1)
    circuit = discovered_circuit(results, "clean", sizes, 4, 4, upto=3)
    per_kv = 2  # the tiny llama: 4 query heads, 2 KV heads
    receivers = sorted(
        {Receiver("v", la, h // per_kv) for la, h in circuit.group("position_transmitters").heads},
        key=lambda r: (r.layer, r.head),
    )
    library = path_patching(
        model, inputs, base.target_ids, sender_positions="query_box", receivers=receivers, receiver_positions="query_box"
    )
    clean = {r.example: r.target_prob for r in by_config["clean"]}
    for layer in range(4):
        for head in range(4):
            rows = by_config[stage_config_name("position_detectors", layer, head)]
            stored = sum((r.target_prob - clean[r.example]) / clean[r.example] for r in rows) / len(rows)
            assert stored == pytest.approx(float(library.scores[layer, head]), rel=1e-4, abs=1e-6)
    assert library.scores.abs().sum() > 0


def test_report_writes_the_circuit_heat_maps_and_faithfulness(circuit_run):
    result = runner.invoke(app, ["report", str(circuit_run)])
    assert result.exit_code == 0, result.output
    data = json.loads((circuit_run / "circuit.json").read_text())
    circuit = Circuit.from_json(data["groups"])
    assert list(circuit.groups) == ["value_fetchers", "position_transmitters", "position_detectors", "structure_readers"]
    assert [len(g.heads) for g in circuit.groups.values()][1:] == [2, 2, 1]
    assert not set(circuit.groups["value_fetchers"].heads) & set(circuit.groups["position_transmitters"].heads)
    figures = sorted(p.name for p in (circuit_run / "figures").glob("*.png"))
    assert sum("path-patching" in f for f in figures) == 4 and any(f.endswith("-circuit.png") for f in figures)
    html = (circuit_run / "report.html").read_text()
    assert "faithfulness (÷ full model)" in html and "random circuits (mean of 2)" in html
    assert "path patching value_fetchers 0.0" not in html  # hundreds of heads: heat maps, not summary rows


def test_circuit_run_resumes_to_the_same_rows(tmp_path, et_model_dir, circuit_run):
    recipe, path = load_recipe(_circuit_recipe(tmp_path / "r.yaml", et_model_dir))
    out = tmp_path / "run"
    for n in (5, 23):
        with stopped_after(n), pytest.raises(Interrupted):
            run_recipe(recipe, out, recipe_path=path)
    run_recipe(recipe, out, recipe_path=path)
    resumed = {(r.config, r.example): r.target_prob for r in load_run(out).rows}
    whole = {(r.config, r.example): r.target_prob for r in load_run(circuit_run).rows}
    assert resumed == whole


def test_circuit_recipe_errors(tmp_path, et_model_dir):
    bad = _circuit_recipe(tmp_path / "a.yaml", et_model_dir).read_text().replace("plain: clean\n", "plain: nothing\n")
    (tmp_path / "a.yaml").write_text(bad)
    result = runner.invoke(app, ["run", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "plain 'nothing' must name a configuration without grafts" in result.output
    bad = _circuit_recipe(tmp_path / "c.yaml", et_model_dir).read_text().replace("seed: 0}", "seed: 0, pairs: [object]}")
    (tmp_path / "c.yaml").write_text(bad)
    result = runner.invoke(app, ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "path patching needs clean prompts with corrupted sources" in result.output
    bad = _circuit_recipe(tmp_path / "b.yaml", et_model_dir).read_text().replace("boxes: [3]", "boxes: [1]")
    (tmp_path / "b.yaml").write_text(bad)
    result = runner.invoke(app, ["run", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "at least 2 boxes" in result.output


def _file_circuit_recipe(path: Path, model_dir: str, circuit: str, sweep: str = ", random: 2", plain: str = "clean") -> Path:
    """The circuit recipe's data, model and plain configuration, with a ``circuit`` sweep of a given circuit."""
    text = _circuit_recipe(path, model_dir).read_text().split("sweeps:")[0]
    sweep = f"{{kind: circuit, plain: {plain}, circuit: {circuit}, mean_prompts: 8{sweep}}}"
    path.write_text(f"{text}sweeps:\n  - {sweep}\n")
    return path


def test_circuit_sweep_of_a_file_equals_the_discovered_circuit(tmp_path, et_model_dir, circuit_run, circuit_file):
    """The circuit written by an et-circuit run, tested by a ``circuit`` sweep on the same
    prompts, gives the run's own faithfulness rows: the circuit and each seed's random circuit."""
    recipe = _file_circuit_recipe(tmp_path / "r.yaml", et_model_dir, str(circuit_file))
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    given, found = load_run(tmp_path / "run").by_config, load_run(circuit_run).by_config

    def probs(rows):
        return {r.example: r.target_prob for r in rows}

    assert probs(given[str(circuit_file)]) == probs(found["circuit"])
    for seed in (1, 2):
        assert probs(given[f"random circuit {seed} of {circuit_file}'s sizes"]) == probs(found[f"random circuit {seed}"])
    assert probs(given[str(circuit_file)]) != probs(given["clean"])
    html = (tmp_path / "run" / "report.html").read_text()
    assert "faithfulness (÷ full model)" in html and "random circuits (mean of 2)" in html


def test_circuit_sweep_takes_the_papers_head_means(tmp_path, et_model_dir, circuit_file):
    """``means: any_label`` takes the head means over prompts whose query label may name a box:
    other means, other rows."""
    rows = {}
    for means in ("no_box", "any_label"):
        recipe = _file_circuit_recipe(tmp_path / f"{means}.yaml", et_model_dir, str(circuit_file), f", random: 0, means: {means}")
        result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / means)])
        assert result.exit_code == 0, result.output
        rows[means] = [r.target_prob for r in load_run(tmp_path / means).by_config[str(circuit_file)]]
    assert rows["no_box"] != rows["any_label"]


@pytest.mark.parametrize(
    ("circuit", "plain", "message"),
    [
        ("discovered", "clean", "an et_circuit sweep tests the one it discovers"),
        ("missing.json", "clean", "circuit file missing.json does not exist"),
        ("shipped:nothing", "clean", "no shipped circuit 'shipped:nothing'"),
        ("CIRCUIT", "nothing", "plain 'nothing' must name a configuration without grafts (written under 'configs')"),
    ],
)
def test_circuit_sweep_errors_name_the_problem(tmp_path, et_model_dir, circuit_file, circuit, plain, message):
    recipe = _file_circuit_recipe(tmp_path / "r.yaml", et_model_dir, circuit.replace("CIRCUIT", str(circuit_file)), plain=plain)
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def _later_recipe(path: Path, model_dir: str, donor_dir: str, circuit: Path, sweeps: str, pairs: str = "[corrupted]") -> Path:
    path.write_text(
        textwrap.dedent(f"""\
        name: tiny-et-later
        data: {{entity_tracking: {{boxes: [3], examples: 5, seed: 0, pairs: {pairs}}}}}
        models:
          pre: {{spec: {model_dir}}}
          other: {{spec: {donor_dir}}}
        recipient: pre
        eval: {{batch_size: 8, bootstrap: 50, metric: top1}}
        configs:
          - {{name: clean, model: pre}}
          - {{name: other, model: other}}
        sweeps:
        """)
        + textwrap.indent(textwrap.dedent(sweeps).replace("CIRCUIT", str(circuit)), "  ")
    )
    return path


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory, et_model_dir) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(et_model_dir)
    path = tmp_path_factory.mktemp("et-other")
    make_text_model("llama", tokenizer, seed=9).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def circuit_file(circuit_run) -> Path:
    if not (circuit_run / "circuit.json").exists():
        assert runner.invoke(app, ["report", str(circuit_run)]).exit_code == 0
    return circuit_run / "circuit.json"


def test_circuit_cmap_of_a_model_into_itself_changes_nothing(tmp_path, et_model_dir, other_dir, circuit_file):
    sweeps = """\
        - {kind: circuit_cmap, donor: pre, circuit: CIRCUIT, panel: self}
        - {kind: circuit_cmap, donor: other, circuit: CIRCUIT}
        - {kind: circuit_cmap, donor: pre, recipient: other, circuit: CIRCUIT, panel: reverse}
        """
    recipe = _later_recipe(tmp_path / "cmap.yaml", et_model_dir, other_dir, circuit_file, sweeps)
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    by_config = load_run(tmp_path / "run").by_config
    clean = [r.target_prob for r in by_config["clean"]]
    names = [n for n in by_config if n.endswith("from pre into pre")]
    assert len(names) == 5  # four groups and all of them
    for name in names:
        assert [r.target_prob for r in by_config[name]] == clean
    patched = [r.target_prob for r in by_config["all groups from other into pre"]]
    assert patched != clean
    assert "all groups from pre into other" in by_config


def test_circuit_graft_grafts_each_groups_head_weights_at_its_positions_like_the_library(tmp_path, et_model_dir, other_dir):
    """Weight-level CMAP: the donor's weights of each group's heads at the group's positions. The
    circuit's groups share layers 1 and 2 at different positions (query_box, correct_box, LT), so
    "all groups" needs head grafts that share modules. A model into itself changes nothing; the
    stored probabilities are the library's HeadGraft forward; the report draws one figure of both
    views for the panel."""
    from graftlens import HeadGraft, grafted_forward

    groups = {
        "value_fetchers": {"positions": "LT", "heads": [[3, 0], [3, 1]]},
        "position_transmitters": {"positions": "LT", "heads": [[2, 0]]},
        "position_detectors": {"positions": "query_box", "heads": [[1, 0], [2, 1]]},
        "structure_readers": {"positions": "correct_box", "heads": [[1, 2], [2, 3]]},
    }
    circuit = tmp_path / "circuit.json"
    circuit.write_text(json.dumps({"groups": groups}))
    sweeps = """\
        - {kind: circuit_graft, donor: pre, circuit: CIRCUIT, panel: self}
        - {kind: circuit_cmap, donor: other, circuit: CIRCUIT, panel: both views}
        - {kind: circuit_graft, donor: other, circuit: CIRCUIT, panel: both views}
        - {kind: circuit_graft, donor: other, circuit: CIRCUIT, parts: q, head_groups: [position_detectors], panel: q}
        """
    recipe = _later_recipe(tmp_path / "graft.yaml", et_model_dir, other_dir, circuit, sweeps)
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    by_config = load_run(tmp_path / "run").by_config
    clean = [r.target_prob for r in by_config["clean"]]
    itself = [n for n in by_config if n.endswith("from pre into pre")]
    assert len(itself) == 5
    for name in itself:
        assert [r.target_prob for r in by_config[name]] == clean
    model, other = load_model(et_model_dir), load_model(other_dir)
    prompts, base, _ = _pairs(model, "corrupted", 5)
    for name, rules in [
        (
            "all groups weights (q+k+v+o) from other into pre",
            [HeadGraft("other", g["heads"], g["positions"]) for g in groups.values()],
        ),
        ("position detectors weights (q) from other into pre", [HeadGraft("other", [(1, 0), (2, 1)], "query_box", "q")]),
    ]:
        with torch.no_grad():
            logits = grafted_forward(
                model, {"other": other}, rules, base.input_ids, base.attention_mask, spans=base.spans, last_only=True
            )
        expected = logits[:, -1].float().softmax(-1).gather(1, base.target_ids[:, None])[:, 0].tolist()
        stored = {r.example: r.target_prob for r in by_config[name]}
        assert [stored[p.id] for p in prompts] == pytest.approx(expected, rel=1e-5), name
        assert [stored[p.id] for p in prompts] != clean
    assert runner.invoke(app, ["report", str(tmp_path / "run")]).exit_code == 0
    html = (tmp_path / "run" / "report.html").read_text()
    assert (
        "both views, heads&#x27; activations and weights from other" in html
        or "both views, heads' activations and weights from other" in html
    )


def test_dcm_recipe_stores_masks_and_patches_the_whole_group_like_the_library(tmp_path, et_model_dir, other_dir, circuit_file):
    from graftlens.interventions.masks import DesideratumBatch, masked_patch_logits

    sweeps = """\
        - {kind: dcm, circuit: CIRCUIT, head_groups: [value_fetchers, position_detectors], desiderata: [position, object],
           boxes: 3, train_examples: 8, epochs: 2, batch_size: 4}
        """
    recipe = _later_recipe(tmp_path / "dcm.yaml", et_model_dir, other_dir, circuit_file, sweeps, "[position, object]")
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "run")
    assert {r.template for r in run.rows} == {"position", "object"}
    masked = run.by_config["value fetchers: mask for position"]
    circuit = Circuit.from_json(json.loads(circuit_file.read_text())["groups"])
    heads = circuit.groups["value_fetchers"].heads
    assert sorted(masked[0].extra) == sorted(f"mask {la}.{h}" for la, h in heads)
    assert all(0 < v < 1 for v in masked[0].extra.values())
    # "all heads": the group patched whole, as the library computes it
    model = load_model(et_model_dir)
    prompts, base, inputs = _pairs(model, "object", 5)
    with torch.no_grad():
        logits = masked_patch_logits(model, DesideratumBatch(inputs, base.target_ids), list(heads), torch.ones(len(heads)), "LT")
    expected = logits.float().softmax(-1).gather(1, base.target_ids[:, None])[:, 0].tolist()
    stored = {r.example: r.target_prob for r in run.by_config["value fetchers: all heads"] if r.template == "object"}
    assert [stored[p.id] for p in prompts] == pytest.approx(expected, rel=1e-5)
    assert runner.invoke(app, ["report", str(tmp_path / "run")]).exit_code == 0
    assert json.loads((tmp_path / "run" / "dcm_masks.json").read_text()).keys() == {
        "value fetchers: mask for position",
        "value fetchers: mask for object",
        "position detectors: mask for position",
        "position detectors: mask for object",
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("head_groups: [value_fetchers]", "head_groups: [movers]"), "head_groups.0"),
        (lambda s: s.replace("WHERE", "nowhere.json"), "circuit file"),
        (lambda s: s.replace("WHERE", "shipped:nothing"), "no shipped circuit 'shipped:nothing'"),
        (lambda s: s.replace("WHERE", "BAD_HEADS"), "heads [(2, 9)] out of range"),
        (lambda s: s.replace("pairs: [position]", "pairs: [corrupted]"), "the scored prompts must be desideratum pairs"),
    ],
)
def test_circuit_method_errors_name_the_problem(tmp_path, et_model_dir, other_dir, edit, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"groups": {"value_fetchers": {"positions": "LT", "heads": [[2, 9]]}}}))
    sweeps = "- {kind: dcm, circuit: WHERE, head_groups: [value_fetchers], desiderata: [position]}\n"
    recipe = _later_recipe(tmp_path / "r.yaml", et_model_dir, other_dir, Path("unused"), sweeps, "[position]")
    recipe.write_text(edit(recipe.read_text()).replace("BAD_HEADS", str(bad)))
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_task_finetunes_train_on_their_task_and_are_cached(tmp_path, et_model_dir, graftlens_cache):
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(
        textwrap.dedent(f"""\
        name: tiny-et-finetunes
        data: {{entity_tracking: {{boxes: [2, 3], examples: 4}}}}
        models:
          pre: {{spec: {et_model_dir}}}
          et: {{finetune: {{base: pre, task: entity_tracking, examples: 8, settings: {{epochs: 1, batch_size: 4}}}}}}
          arith: {{finetune: {{base: et, task: arithmetic, examples: 8, settings: {{epochs: 1, batch_size: 4}}}}}}
        recipient: pre
        eval: {{metric: top1, bootstrap: 20}}
        configs:
          - {{name: PRE, model: pre}}
          - {{name: ET, model: et}}
          - {{name: ET+ARITH, model: arith}}
        """)
    )
    for attempt in range(2):
        result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / f"run{attempt}")])
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / f"run{attempt}" / "manifest.json").read_text())
        assert manifest["models"]["et"]["task"] == "entity_tracking" and manifest["models"]["arith"]["task"] == "arithmetic"
        assert manifest["models"]["et"]["reused"] is (attempt == 1)  # the second run reuses the cached finetunes
    by_config = load_run(tmp_path / "run0").by_config
    assert [r.target_prob for r in by_config["ET"]] != [r.target_prob for r in by_config["PRE"]]
    assert {r.template for r in by_config["PRE"]} == {"2 boxes", "3 boxes"}
    bad = recipe.read_text().replace("task: arithmetic, examples: 8", "examples: 8")
    (tmp_path / "bad.yaml").write_text(bad)
    result = runner.invoke(app, ["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")])
    assert result.exit_code != 0 and "'examples' sets the size of a task finetune: give 'task' too" in result.output


def test_task_datasets_are_seeded_and_disjoint_from_the_scored_vocabulary():
    from graftlens.data.entity_tracking import vocabulary
    from graftlens.data.tasks import task_dataset

    tokenizer = make_text_tokenizer([" ".join(OBJECTS) * 3, " ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3] * 20, 400)
    et = task_dataset("entity_tracking", tokenizer, 30, seed=1)
    assert et.content_hash == task_dataset("entity_tracking", tokenizer, 30, seed=1).content_hash
    assert et.content_hash != task_dataset("entity_tracking", tokenizer, 30, seed=2).content_hash
    test_objects = set(vocabulary(tokenizer, "test").objects)
    for t in et.train:
        words = {w.strip(",.") for w in t.text.split()}
        assert not words & test_objects
    arith = task_dataset("arithmetic", tokenizer, 50, seed=0)
    for t in arith.train:
        question, answer = t.text.split(" = ")
        expr = question.split("? ")[1]
        assert eval(expr) == int(answer)  # noqa: S307 (digits and + - * only)
    assert {e.prompt for e in arith.test}.isdisjoint({t.text.rsplit(" ", 1)[0] for t in arith.train})
    with pytest.raises(ValueError, match="unknown finetuning task 'poetry'"):
        task_dataset("poetry", tokenizer, 3)


def test_shipped_entity_tracking_recipes_and_circuit():
    from graftlens.methods.core.circuits import GROUPS, load_circuit

    for name in ("smollm2-135m-et", "smollm2-135m-et-7boxes"):
        circuit = load_circuit(f"shipped:{name}")
        assert list(circuit.groups) == list(GROUPS)
        circuit.check(30, 9)  # SmolLM2-135M: 30 layers of 9 heads
    for name, kinds in [
        ("entity-tracking", {"configs"}),
        ("et-circuit", {"configs", "path_patching", "circuit"}),
        ("et-dcm", {"configs", "dcm"}),
        ("et-cmap", {"configs", "circuit_cmap", "circuit_graft"}),
        ("et-circuit-7boxes", {"configs", "path_patching", "circuit", "faithfulness_curve"}),
        ("et-faithfulness-paper", {"configs", "circuit"}),
    ]:
        recipe, _ = load_recipe(name)
        configs = recipe.expanded(n_layers=30, n_heads=9)
        assert {c.kind for c in configs} == kinds
    recipe, _ = load_recipe("et-circuit")
    configs = recipe.expanded(n_layers=30, n_heads=9)
    assert sum(c.kind == "path_patching" for c in configs) == 4 * 30 * 9
    assert [c.phase for c in configs if c.kind == "circuit"] == [5] * 6
    with pytest.raises(Exception, match="no shipped circuit 'shipped:gpt2'"):
        load_circuit("shipped:gpt2")


def test_verify_reproduces_rows_of_every_stage(circuit_run):
    """Later stages read earlier ones' stored results; re-scoring reads the same store."""
    result = runner.invoke(app, ["verify", str(circuit_run), "--rows", "80"])
    assert result.exit_code == 0, result.output
    assert "80 of 408 stored rows re-scored" in " ".join(result.output.split()) and "80 match" in result.output
