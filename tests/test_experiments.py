"""Recipes, the resumable sweep runner, its SQLite store, metrics, export, figures and the report,
end to end on a tiny llama with a BPE tokenizer (no download)."""

from __future__ import annotations

import csv
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import Interrupted, stopped_after
from graftlens.cli import app
from graftlens.configfiles import ConfigFileError
from graftlens.data.dataset import tokenize_test
from graftlens.eval import evaluate, pad_id_of
from graftlens.experiments import RecipeError, StoreError, load_recipe, run_recipe, shipped_recipes
from graftlens.graft import Graft
from graftlens.models import load_model
from graftlens.results import load_run
from graftlens.results.metrics import bootstrap_ci
from graftlens.results.store import ResultsStore

runner = CliRunner()

POSITION_SETS = ["FE", "LT", "FE+LT", "(FE+LT)^C", "FE^C", "LT^C"]


def recipe_text(model_dir: str, data_dir: Path, name: str = "tiny", extra_sweeps: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
        name: {name}
        description: a tiny end-to-end run
        data: {{dir: {data_dir}}}
        models:
          pre: {{spec: {model_dir}}}
          sft: {{finetune: {{base: pre, settings: {{epochs: 2, batch_size: 8, learning_rate: 0.003}}}}}}
        recipient: pre
        eval: {{batch_size: 5, bootstrap: 200, target_logprob: true, generate: 4}}
        configs:
          - {{name: PRE, model: pre}}
          - {{name: SFT, model: sft}}
          - name: everything
            grafts: [{{donor: sft, components: all, layers: all, positions: all}}]
          - name: two donors
            grafts:
              - {{donor: sft, components: all, layers: all, positions: all}}
              - {{donor: pre, components: all, layers: all, positions: all}}
        sweeps:
          - {{kind: positions, donor: sft, sets: {POSITION_SETS}}}
          - {{kind: components, donor: sft, positions: LT, components: [attn, o+mlp], layers: [all, half2]}}
          - {{kind: layer_window, donor: sft, components: [mlp], window: 3}}
          - {{kind: positions, donor: pre, recipient: sft, panel: reverse, label: sft ← pre, sets: [FE, LT]}}
        """
        )
        + extra_sweeps
    )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, small_facts) -> Path:
    return small_facts.save(tmp_path_factory.mktemp("facts"))


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory, text_model_dir, tiny_data, graftlens_cache) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(recipe_text(text_model_dir, tiny_data))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, recipe_file) -> Path:
    """The tiny recipe run once through the CLI (figures and report included)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = runner.invoke(app, ["run", str(recipe_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    return out


N_CONFIGS = 4 + len(POSITION_SETS) + 4 + 4 + 2  # written + positions + components + mlp windows over 4 layers + reverse


# --- recipes ----------------------------------------------------------------------------------


def test_shipped_recipes_validate_and_name_the_paper_configs() -> None:
    assert {"demo", "position-grafting", "component-grafting", "hybrid", "layer-sweep", "direction"} <= set(shipped_recipes())
    recipe, _ = load_recipe("position-grafting")
    names = [c.name for c in recipe.expanded(n_layers=30)]
    assert names == ["PRE", "SFT", "FE", "LT", "FE+LT", "(FE+LT)^C", "FE^C", "LT^C"]
    comps, _ = load_recipe("component-grafting")
    assert len(comps.expanded(n_layers=30)) == 3 + 7 * 7
    window, _ = load_recipe("layer-sweep")
    cfgs = window.expanded(n_layers=30)
    mlp_l0 = next(c for c in cfgs if c.name == "mlp @ L0")
    mlp_l29 = next(c for c in cfgs if c.name == "mlp @ L29")
    assert mlp_l0.grafts[0].layers == [0, 1] and mlp_l29.grafts[0].layers == [28, 29]


def test_hybrid_recipe_grafts_what_the_paper_defines() -> None:
    """Figure 5 of Nief et al.: at LT, the task model's q, k, v and the relation model's O and MLP
    in the final half only; at FE, the variant's task components in every layer; nothing else."""
    from conftest import make_tiny_model
    from graftlens.graft.reference import site_owners
    from graftlens.models import adapter_for

    model = make_tiny_model("llama")  # 4 layers: the final half is layers 2 and 3
    adapter = adapter_for(model)
    n, fe, lt = 6, (1, 3), 5
    recipe, _ = load_recipe("hybrid")
    configs = {c.name: c for c in recipe.expanded(n_layers=4)}
    at_fe = {
        "hybrid: FE nothing": set(),
        "hybrid: FE ATTN": {"q", "k", "v"},
        "hybrid: FE FFN": {"gate", "up", "down"},
        "hybrid: FE O+FFN": {"o", "gate", "up", "down"},
        "hybrid: FE everything": set(adapter.layer_components),
    }
    for name, fe_components in at_fe.items():
        owners = site_owners(model, configs[name].rules(), n, {"FE": fe})
        for component in adapter.layer_components:
            for layer in range(4):
                for site in adapter.sites(component, layer):
                    who = owners.get((site.path, site.rows), [None] * n)
                    if layer >= 2 and component in ("q", "k", "v"):
                        want_lt = "task"
                    elif layer >= 2 and component in ("o", "gate", "up", "down"):
                        want_lt = "relation"
                    else:
                        want_lt = None
                    assert who[lt] == want_lt, (name, component, layer)
                    want_fe = "task" if component in fe_components else None
                    assert who[fe[0]] == who[fe[1] - 1] == want_fe, (name, component, layer)
                    assert who[0] is None and who[3] is None and who[4] is None, (name, component, layer)
        model_wide = "task" if name == "hybrid: FE everything" else None
        assert owners.get((adapter.sites("embed")[0].path, None), [None] * n)[fe[0]] == model_wide


@pytest.mark.parametrize(
    ("change", "culprit"),
    [
        (lambda t: t.replace("kind: positions, donor", "kind: positions, donr"), "donr"),
        (lambda t: t.replace("components: [attn, o+mlp]", "components: [attn, o+mpl]"), "mpl"),
        (lambda t: t.replace("sets: ['FE'", "sets: ['FE+'"), "FE+"),
        (lambda t: t.replace("{name: SFT, model: sft}", "{name: SFT, model: sf}"), "'sf'"),
        (lambda t: t.replace("- {name: SFT, model: sft}", "- {name: PRE, model: sft}"), "two configurations are named 'PRE'"),
        (lambda t: t.replace("bootstrap: 200", "bootstrap: -1"), "eval.bootstrap"),
        (lambda t: t.replace("recipient: pre", "recipient: pre\nrecipent: x"), "recipent"),
        (lambda t: t.replace("epochs: 2", "epocs: 2"), "epocs"),
    ],
)
def test_recipe_errors_name_the_key_and_the_file(tmp_path, text_model_dir, tiny_data, change, culprit) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(change(recipe_text(text_model_dir, tiny_data)))
    with pytest.raises(ConfigFileError) as err:
        load_recipe(path)
    assert culprit in str(err.value) and "bad.yaml" in str(err.value), str(err.value)


def test_bad_recipe_is_one_line_from_the_cli(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodels: {pre: {spec: smollm2-135m}}\nrecipient: pre\nconfigs: [{name: PRE, modle: pre}]\n")
    result = subprocess.run([sys.executable, "-m", "graftlens", "run", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "configs.0.modle" in lines[0] and "r.yaml" in lines[0], result.stderr
    result = subprocess.run([sys.executable, "-m", "graftlens", "run", "no-such-recipe"], capture_output=True, text=True)
    assert result.returncode == 2 and "shipped: " in result.stderr and "position-grafting" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("layers: [all, half2]", "layers: [all, 7]", r"sweeps\[2\] \(components\) layers: layer 7 out of range"),
        ("sets: ['FE'", "sets: ['director'", r"configuration 'director'.*no span 'director'"),
    ],
)
def test_configs_that_do_not_fit_fail_before_any_scoring(tmp_path, text_model_dir, tiny_data, graftlens_cache, old, new, message):
    """A layer out of range, a span the prompts lack: one error naming the configuration, no rows."""
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(text_model_dir, tiny_data).replace(old, new))
    recipe, _ = load_recipe(path)
    with pytest.raises(RecipeError, match=message):
        run_recipe(recipe, tmp_path / "run", recipe_path=path)
    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:
        assert store.count(recipe.content_hash()) == 0


# --- the run, its store and its numbers ---------------------------------------------------------


def test_run_writes_one_row_per_config_and_example(finished_run, small_facts) -> None:
    run = load_run(finished_run)
    n_prompts = len(small_facts.test)
    assert len(run.configs) == N_CONFIGS and run.manifest["n_prompts"] == n_prompts
    assert len(run.rows) == N_CONFIGS * n_prompts
    assert len({(r.config, r.example) for r in run.rows}) == len(run.rows)
    manifest = run.manifest
    assert set(manifest["models"]) == {"pre", "sft"}
    assert "spec" in manifest["models"]["pre"] and Path(manifest["models"]["sft"]["checkpoint"]).is_dir()
    assert manifest["data"]["content_hash"] == small_facts.content_hash
    assert all((Path(manifest["data"]["dir"]) / f).is_file() for f in manifest["data"]["files"])
    assert (finished_run / "manifest.json").is_file()


def test_stored_scores_match_the_models_and_the_grafting_identities(finished_run, small_facts) -> None:
    """PRE equals the pretrained model scored directly; grafting everything everywhere equals SFT;
    with two donors the later rule wins, so grafting pre over sft everywhere gives PRE back."""
    run = load_run(finished_run)
    by = {(r.config, r.example): r for r in run.rows}
    pre = load_model(run.manifest["models"]["pre"]["spec"])
    prompts = tokenize_test(small_facts.test, pre.tokenizer)
    direct = evaluate(pre.model, prompts, pad_id_of(pre.tokenizer), batch_size=5)
    for p, s in zip(prompts, direct):
        assert by[("PRE", p.id)].target_rank == s.target_rank
        assert by[("PRE", p.id)].target_prob == pytest.approx(s.target_prob, abs=1e-6)
    for p in prompts:
        assert by[("everything", p.id)].target_prob == pytest.approx(by[("SFT", p.id)].target_prob, abs=1e-5)
        assert by[("everything", p.id)].target_rank == by[("SFT", p.id)].target_rank
        assert by[("two donors", p.id)].target_prob == pytest.approx(by[("PRE", p.id)].target_prob, abs=1e-6)
        assert by[("two donors", p.id)].target_rank == by[("PRE", p.id)].target_rank
    # every component everywhere: sft with pre's weights at S is pre with sft's weights at S^C
    for s_ in ("FE", "LT"):
        for p in prompts:
            assert by[(f"sft ← pre: {s_}", p.id)].target_prob == pytest.approx(by[(f"{s_}^C", p.id)].target_prob, abs=1e-6)
    # FE+LT differs from PRE somewhere: the finetuned weights were grafted
    assert any(abs(by[("FE+LT", p.id)].target_prob - by[("PRE", p.id)].target_prob) > 1e-4 for p in prompts)


def test_stored_target_logprobs_and_continuations_are_the_grafted_models(finished_run, small_facts) -> None:
    """Each row's whole-target log-probability is a full grafted pass over prompt and target, and
    its continuation the grafted model's own greedy tokens; grafting everything everywhere gives
    SFT's, and targets sharing a first token are told apart."""
    from graftlens import grafted_forward, grafted_generate
    from graftlens.eval.batching import collate, with_targets
    from graftlens.eval.scoring import target_logprob

    run = load_run(finished_run)
    by = {(r.config, r.example): r for r in run.rows}
    assert all(r.target_logprob is not None and r.continuation is not None for r in run.rows)
    pre = load_model(run.manifest["models"]["pre"]["spec"])
    sft = load_model(Path(run.manifest["models"]["sft"]["checkpoint"]))
    prompts = tokenize_test(small_facts.test, pre.tokenizer)[:5]
    batch = collate(prompts, pad_id_of(pre.tokenizer))
    forced = with_targets(batch)
    configs = {c.name: c for c in run.configs}
    for name in ("PRE", "FE+LT", "LT^C"):
        rules = [Graft(**{k: g[k] for k in ("donor", "components", "layers", "positions")}) for g in configs[name].grafts]
        logits = grafted_forward(pre, {"sft": sft}, rules, forced.input_ids, forced.attention_mask, batch.spans)
        want = target_logprob(logits[:, -forced.n_target :], forced)
        said = grafted_generate(pre, {"sft": sft}, rules, batch.input_ids, batch.attention_mask, batch.spans, 4)
        for i, p in enumerate(prompts):
            assert by[(name, p.id)].target_logprob == pytest.approx(float(want[i]), abs=1e-4)
            assert by[(name, p.id)].continuation == pre.tokenizer.decode(said[i].tolist())
    for p in prompts:
        assert by[("everything", p.id)].target_logprob == pytest.approx(by[("SFT", p.id)].target_logprob, abs=1e-4)
        assert by[("everything", p.id)].continuation == by[("SFT", p.id)].continuation
        if len(p.target_ids) > 1:  # the whole target is less likely than its first token
            assert by[("PRE", p.id)].target_logprob < math.log(by[("PRE", p.id)].target_prob)
    html = (finished_run / "report.html").read_text()
    assert "says:" in html and "log p(whole target)" in html


def _all_rows(run_dir: Path) -> list[tuple]:
    con = sqlite3.connect(run_dir / "results.sqlite")
    rows = con.execute(
        "SELECT config, example, target_prob, target_rank, top_tokens FROM results ORDER BY config, example"
    ).fetchall()
    con.close()
    return rows


def interrupted_run(recipe, path: Path, out: Path, batches: int = 7) -> int:
    """Run ``recipe`` into ``out`` and stop it after ``batches`` units; the rows it left."""
    with stopped_after(batches), pytest.raises(Interrupted):
        run_recipe(recipe, out, recipe_path=path)
    with ResultsStore(out / "results.sqlite") as store:
        return store.count(recipe.content_hash())


def test_resume_after_an_interruption_loses_and_duplicates_nothing(tmp_path, recipe_file, finished_run) -> None:
    recipe, path = load_recipe(recipe_file)
    out = tmp_path / "run"
    partial = interrupted_run(recipe, path, out)
    assert 0 < partial < len(_all_rows(finished_run))
    summary = run_recipe(recipe, out, recipe_path=path)
    assert summary.written == summary.total - partial
    assert _all_rows(out) == _all_rows(finished_run)  # bit for bit, no duplicates, nothing lost
    again = run_recipe(recipe, out, recipe_path=path)
    assert again.written == 0 and again.total == summary.total


KILLER = """
import os, signal, sys, threading
from graftlens.experiments import load_recipe, run_recipe
recipe, path = load_recipe(sys.argv[1])
mode, value = sys.argv[3], float(sys.argv[4])
calls = 0
def progress(done, total):
    global calls
    calls += 1
    if mode == "call" and calls == int(value):
        os.kill(os.getpid(), signal.SIGKILL)
if mode == "seconds":  # at a random moment: loading, checking, scoring or mid-commit
    threading.Timer(value, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
run_recipe(recipe, sys.argv[2], recipe_path=path, progress=progress)
"""


def test_killed_many_times_the_run_resumes_to_a_byte_identical_export(
    tmp_path, recipe_file, finished_run, graftlens_cache
) -> None:
    """SIGKILLed five times (after a seeded number of batches, or after a seeded number of
    seconds, which lands anywhere: loading, checking, scoring, committing), then run to the end
    with the same command: the exported CSV equals an uninterrupted run's, byte for byte."""
    import random

    rng = random.Random(20)
    out = tmp_path / "run"
    env = {**os.environ, "GRAFTLENS_CACHE": graftlens_cache}
    kills = [
        ("call", rng.randint(2, 6)),
        ("seconds", rng.uniform(2.0, 6.0)),
        ("call", rng.randint(3, 8)),
        ("seconds", rng.uniform(3.0, 8.0)),
        ("call", rng.randint(2, 5)),
    ]
    landed = 0
    for mode, value in kills:
        killed = subprocess.run(
            [sys.executable, "-c", KILLER, str(recipe_file), str(out), mode, str(value)], env=env, capture_output=True, text=True
        )
        assert killed.returncode in (-9, 0), killed.stderr  # 0: the run finished before its kill came
        landed += killed.returncode == -9
    assert landed >= 3 and 0 < len(_all_rows(out))
    result = subprocess.run(
        [sys.executable, "-m", "graftlens", "run", str(recipe_file), "--out", str(out)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert _all_rows(out) == _all_rows(finished_run)
    for run_dir, name in ((out, "resumed.csv"), (finished_run, "once.csv")):
        done = runner.invoke(app, ["export", str(run_dir), "--csv", str(tmp_path / name)])
        assert done.exit_code == 0, done.output
    assert (tmp_path / "resumed.csv").read_bytes() == (tmp_path / "once.csv").read_bytes()


def test_another_recipe_in_the_same_run_directory_is_refused(tmp_path, text_model_dir, tiny_data, finished_run) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    path = tmp_path / "other.yaml"
    path.write_text(recipe_text(text_model_dir, tiny_data, name="other"))
    recipe, _ = load_recipe(path)
    with pytest.raises(StoreError, match="another recipe.*--restart"):
        run_recipe(recipe, copy, recipe_path=path)
    summary = run_recipe(recipe, copy, recipe_path=path, resume=False)
    assert summary.written == summary.total == len(_all_rows(finished_run))


def test_bootstrap_intervals() -> None:
    assert bootstrap_ci(np.ones(20)) == (1.0, 1.0)
    values = (np.arange(200) % 3 == 0).astype(float)
    lo, hi = bootstrap_ci(values, 1000, seed=0)
    assert lo < values.mean() < hi and hi - lo < 0.2
    assert bootstrap_ci(values, 1000, seed=0) == (lo, hi)  # seeded
    lo_small, hi_small = bootstrap_ci(values[:30], 1000, seed=0)
    assert hi_small - lo_small > hi - lo  # fewer prompts, wider interval


# --- export, figures, report ----------------------------------------------------------------------


def test_export_csv_and_parquet(tmp_path, finished_run) -> None:
    result = runner.invoke(
        app, ["export", str(finished_run), "--csv", str(tmp_path / "r.csv"), "--parquet", str(tmp_path / "r.pq")]
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n = len(_all_rows(finished_run))
    assert len(rows) == n
    required = {"recipe", "config", "template", "example", "prompt", "target", "target_prob", "target_rank", "top1", "top5"}
    assert required <= set(rows[0])
    assert {r["config"] for r in rows} >= {"PRE", "SFT", *POSITION_SETS}
    for r in rows:
        assert r["top5"] == str(int(int(r["target_rank"]) <= 5))
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(tmp_path / "r.pq")
    assert table.num_rows == n and required <= set(table.column_names)
    result = runner.invoke(app, ["export", str(finished_run)])
    assert result.exit_code == 2 and "--csv" in result.output


def test_figures_and_report_files(finished_run) -> None:
    figures = sorted((finished_run / "figures").glob("*.png"))
    # bars of the written configs (one is grafted) and of the positions, two heat maps
    assert [p.stem for p in figures] == ["00-configs", "01-positions", "02-components", "03-layer-window", "04-reverse"]
    assert all(p.with_suffix(".svg").is_file() and p.stat().st_size > 5000 for p in figures)
    html = (finished_run / "report.html").read_text()
    assert html.count("<img") == 5 and "data:image/png;base64," in html
    assert "FE+LT" in html and "Manifest" in html and "graftlens run" in html
    assert "src='figures/" not in html and 'src="http' not in html  # self-contained


def test_report_command_and_bad_run_dir(tmp_path, finished_run) -> None:
    result = runner.invoke(app, ["report", str(finished_run)])
    assert result.exit_code == 0 and "report.html" in result.output, result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "results.sqlite is missing" in result.output


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(tmp_path, finished_run) -> None:
    """The page loads, every figure decodes to a real image, and nothing is fetched from elsewhere."""
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the report in Chromium, and none is installed (see .ci/run)")
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        requests: list[str] = []
        failed: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto((finished_run / "report.html").as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(images) == 5 and all(ok and w > 200 and h > 100 for ok, w, h in images), images
        assert page.title().startswith("graftlens")
        assert page.locator("table").count() >= 3
        assert not failed and all(u.startswith(("file:", "data:")) for u in requests), (failed, requests)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_store_written_before_the_newer_columns_opens_with_them_unmeasured(tmp_path) -> None:
    """Stores from before ``extra``, ``target_logprob`` and ``continuation`` existed gain them on
    open: old rows read as no extras and not measured, new rows store all three."""
    from graftlens.results.store import ResultRow

    path = tmp_path / "results.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE configs (run TEXT NOT NULL, name TEXT NOT NULL, position INTEGER NOT NULL, grp TEXT NOT NULL,
                              spec TEXT NOT NULL, PRIMARY KEY (run, name));
        CREATE TABLE results (run TEXT NOT NULL, config TEXT NOT NULL, example TEXT NOT NULL, template TEXT NOT NULL,
                              direction TEXT NOT NULL, prompt TEXT NOT NULL, target TEXT NOT NULL, target_prob REAL NOT NULL,
                              target_rank INTEGER NOT NULL, top_tokens TEXT NOT NULL, PRIMARY KEY (run, config, example));
        INSERT INTO configs VALUES ('r', 'PRE', 0, 'g', '{"name": "PRE", "group": "g"}');
        INSERT INTO results VALUES ('r', 'PRE', 'e0', 't', 'forward', 'A is', ' B', 0.5, 1, '[" B"]');
        """
    )
    con.commit()
    con.close()
    with ResultsStore(path) as store:
        (old,) = store.rows("r")
        assert (old.extra, old.target_logprob, old.continuation) == ({}, None, None)
        row = ResultRow("PRE", "e1", "t", "forward", "C is", " D", 0.25, 2, (" E",), {"attribute_rate": 0.1}, -3.5, " D and")
        store.add("r", [row])
        new = store.rows("r")[1]
        assert (new.extra, new.target_logprob, new.continuation) == ({"attribute_rate": 0.1}, -3.5, " D and")


def test_the_large_recipes_and_the_paper_models_template(text_model_dir) -> None:
    """The GPU-sized recipes validate at the paper's scale; the template names the paper's models
    by hub id in bf16 with device_map auto, the same loading path as a directory (checked here on
    one: device_map auto on a machine without a GPU keeps every module on the CPU)."""
    for name, n_configs in (
        ("position-grafting-large", 2 + 6),
        ("component-grafting-large", 3 + 7 * 7),
        ("paper-models", 2 + 6 + 7 * 7),
    ):
        recipe, _ = load_recipe(name)
        assert recipe.data.facts >= 500
        assert len(recipe.expanded(n_layers=16)) == n_configs
    template, _ = load_recipe("paper-models")
    pre = template.models["pre"]
    assert (pre.spec, pre.dtype, pre.device_map) == ("meta-llama/Llama-3.2-1B", "bfloat16", "auto")
    for hub_id in ("google/gemma-1.1-2b-it", "EleutherAI/pythia-2.8b", "openai-community/gpt2-xl"):
        assert hub_id in template.description
    model = load_model(text_model_dir, dtype=pre.dtype, device_map=pre.device_map)
    assert {p.device.type for p in model.model.parameters()} == {"cpu"}
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}


def test_open_run_gives_one_dataframe_row_per_stored_result(finished_run) -> None:
    """``graftlens.open_run(path).results`` is the export's table as a DataFrame; the run's manifest and figures come with it."""
    import pandas as pd

    import graftlens

    run = graftlens.open_run(finished_run)
    frame = run.results
    assert isinstance(frame, pd.DataFrame)
    with ResultsStore(finished_run / "results.sqlite") as store:
        assert len(frame) == store.count(load_run(finished_run).run_id) > 0
    assert {"config", "template", "direction", "target_prob", "top5"} <= set(frame.columns)
    assert set(frame["config"]) == {c.name for c in load_run(finished_run).configs}
    assert frame["target_logprob"].notna().all()  # the recipe asks for it
    assert run.manifest["models"] and run.report is not None and run.report.is_file()
    assert run.figures and all(p.suffix == ".png" and p.is_file() for p in run.figures.values())
    with pytest.raises(graftlens.StoreError, match="results.sqlite"):
        graftlens.open_run(finished_run / "nothing-here")
