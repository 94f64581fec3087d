"""Sweeps on Ray: a local cluster with two workers on this CPU stores what one process stores,
row for row, when a worker is killed mid-run, and when it resumes a run another process began.

Ray is an optional extra; CI installs it and sets GRAFTLENS_REQUIRE_RAY, so that these tests
fail there rather than skip when it is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import Interrupted
from graftlens.cli import app
from graftlens.experiments import StoreError, load_recipe, run_recipe
from graftlens.experiments.distributed import DistributedError
from graftlens.results.store import ResultsStore
from test_circuit_recipes import _circuit_recipe
from test_experiments import _all_rows, interrupted_run, recipe_text
from test_recall_recipes import _recipe as recall_recipe

if os.environ.get("GRAFTLENS_REQUIRE_RAY"):
    import ray
else:
    ray = pytest.importorskip("ray")

runner = CliRunner()
WORKER_TITLE = b"ray::ScoringWorker"  # the process title Ray gives a worker actor


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread in this process, so that the two-CPU cluster holds two workers (each computes
    with the threads of the process that drives it, and reserves as many CPUs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory, text_model_dir, small_facts, graftlens_cache) -> Path:
    folder = tmp_path_factory.mktemp("ray-recipe")
    path = folder / "tiny.yaml"
    path.write_text(recipe_text(text_model_dir, small_facts.save(folder / "facts")))
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_recipe) -> Path:
    """The reference: the tiny recipe run by this process alone."""
    recipe, path = load_recipe(tiny_recipe)
    out = tmp_path_factory.mktemp("one-process") / "run"
    run_recipe(recipe, out, recipe_path=path)
    return out


def _export(run_dir: Path, csv: Path) -> bytes:
    result = runner.invoke(app, ["export", str(run_dir), "--csv", str(csv)])
    assert result.exit_code == 0, result.output
    return csv.read_bytes()


def test_the_cli_runs_a_recipe_on_a_local_ray_instance(tmp_path, tiny_recipe, one_process, graftlens_cache) -> None:
    """``graftlens run RECIPE --ray`` starts Ray here, scores on two workers and stops Ray: the
    store and its export are the single process's, byte for byte."""
    out = tmp_path / "run"
    env = {**os.environ, "GRAFTLENS_CACHE": graftlens_cache, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "graftlens", "run", str(tiny_recipe), "--out", str(out), "--ray", "--workers", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "on Ray: 2 workers" in done.stdout
    assert _all_rows(out) == _all_rows(one_process)
    assert _export(out, tmp_path / "ray.csv") == _export(one_process, tmp_path / "one.csv")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with two CPUs, shared by the tests below (runs join it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(WORKER_TITLE):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_run_is_restarted_and_changes_nothing(tmp_path, cluster, tiny_recipe, one_process) -> None:
    """SIGKILL both workers when the first unit is written (one of them is scoring the second):
    new workers take their places and load the models, the lost units are scored again, and the
    rows are the single process's."""
    recipe, path = load_recipe(tiny_recipe)
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if not killed and done > 0:
            pids = _worker_pids()
            assert len(pids) == 2, pids
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)

    summary = run_recipe(recipe, tmp_path / "run", recipe_path=path, ray="local", progress=progress)
    assert killed and summary.workers == 2
    assert summary.restarts >= 2 and not set(killed) & set(_worker_pids())
    assert summary.written == summary.total == len(_all_rows(one_process))
    assert _all_rows(tmp_path / "run") == _all_rows(one_process)


def test_a_run_begun_by_one_process_resumes_on_ray(tmp_path, cluster, tiny_recipe, one_process) -> None:
    recipe, path = load_recipe(tiny_recipe)
    out = tmp_path / "run"
    partial = interrupted_run(recipe, path, out)
    summary = run_recipe(recipe, out, recipe_path=path, ray="local", workers=2)
    assert summary.written == summary.total - partial and partial > 0
    assert _all_rows(out) == _all_rows(one_process)
    again = run_recipe(recipe, out, recipe_path=path, ray="local")
    assert again.written == 0 and again.total == summary.total and again.workers == 0  # nothing to do: no worker started


def test_a_ray_run_stopped_midway_is_finished_by_one_process(tmp_path, cluster, tiny_recipe, one_process) -> None:
    """Stopped on the driver after some rows (as Ctrl-C would), the run keeps what it wrote and
    releases its workers; a run without Ray finishes it to the single process's rows."""
    recipe, path = load_recipe(tiny_recipe)
    out = tmp_path / "run"

    def progress(done: int, total: int) -> None:
        if done >= total // 3:
            raise Interrupted("stopped on the driver")

    with pytest.raises(Interrupted):
        run_recipe(recipe, out, recipe_path=path, ray="local", progress=progress)
    with ResultsStore(out / "results.sqlite") as store:
        partial = store.count(recipe.content_hash())
    assert 0 < partial < len(_all_rows(one_process))
    deadline = time.monotonic() + 30
    while _worker_pids() and time.monotonic() < deadline:  # ray.kill returns before the processes end
        time.sleep(0.2)
    assert not _worker_pids()
    summary = run_recipe(recipe, out, recipe_path=path)
    assert summary.written == summary.total - partial
    assert _all_rows(out) == _all_rows(one_process)


def test_another_recipe_is_refused_on_ray_as_on_one_process(
    tmp_path, cluster, tiny_recipe, one_process, text_model_dir, small_facts
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(recipe_text(text_model_dir, small_facts.save(tmp_path / "facts"), name="other"))
    recipe, path = load_recipe(other)
    with pytest.raises(StoreError, match="holds the results of another recipe"):
        run_recipe(recipe, one_process, recipe_path=path, ray="local")


def test_later_phases_read_the_earlier_ones_on_ray(tmp_path, cluster, et_model_dir) -> None:  # noqa: F811
    """The entity-tracking circuit: each path-patching stage picks its receivers from the stage
    before it, and the circuit from the last; on Ray the driver sends the workers those rows."""
    recipe, path = load_recipe(_circuit_recipe(tmp_path / "recipe.yaml", et_model_dir))
    run_recipe(recipe, tmp_path / "one", recipe_path=path)
    summary = run_recipe(recipe, tmp_path / "ray", recipe_path=path, ray="local")
    assert summary.workers == 2
    assert _all_rows(tmp_path / "ray") == _all_rows(tmp_path / "one")


def test_tensors_a_method_keeps_are_written_by_the_driver(tmp_path, cluster, text_model_dir) -> None:
    """Mean ablation keeps its means beside the store: on Ray the workers send them and the
    driver writes the same file."""
    from safetensors.torch import load_file

    sweep = "{kind: enrichment, window: 1, read_layer: 1, sublayers: [attn], ablation: mean, answer: false}"
    recipe, path = load_recipe(recall_recipe(tmp_path / "mean.yaml", text_model_dir, sweep))
    run_recipe(recipe, tmp_path / "one", recipe_path=path)
    run_recipe(recipe, tmp_path / "ray", recipe_path=path, ray="local")
    assert _all_rows(tmp_path / "ray") == _all_rows(tmp_path / "one")
    one, on_ray = (load_file(tmp_path / d / "sublayer-means.safetensors") for d in ("one", "ray"))
    assert sorted(on_ray) == sorted(one) and all(on_ray[k].equal(one[k]) for k in one)


def test_more_workers_than_the_cluster_has_is_one_clear_error(tmp_path, cluster, tiny_recipe) -> None:
    recipe, path = load_recipe(tiny_recipe)
    with pytest.raises(DistributedError, match="--workers 3: the Ray cluster has 2 CPUs, 1 per worker"):
        run_recipe(recipe, tmp_path / "run", recipe_path=path, ray="local", workers=3)


def test_an_address_nothing_answers_on_is_one_line_before_anything_loads(tmp_path, tiny_recipe) -> None:
    result = runner.invoke(app, ["run", str(tiny_recipe), "--out", str(tmp_path / "run"), "--ray", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: cannot reach the Ray cluster at '127.0.0.1:1': Connection refused"]
    assert not (tmp_path / "run").exists()


def test_an_option_value_left_out_gets_its_stand_in() -> None:
    from graftlens.cli import with_optional_values

    assert with_optional_values(["run", "demo", "--ray"]) == ["run", "demo", "--ray", "local"]
    assert with_optional_values(["run", "demo", "--ray", "--workers", "2"]) == ["run", "demo", "--ray", "local", "--workers", "2"]
    assert with_optional_values(["run", "demo", "--ray", "auto"]) == ["run", "demo", "--ray", "auto"]
    assert with_optional_values(["run", "demo", "--ray=10.0.0.1:6379"]) == ["run", "demo", "--ray=10.0.0.1:6379"]


@pytest.mark.embedded
def test_the_demo_recipe_on_ray_stores_the_single_process_rows(tmp_path, cluster, embedded) -> None:
    """The demo recipe on the embedded model (its finetune cut to one epoch, to keep the test
    short), once in this process and once on two Ray workers: the same rows, bit for bit."""
    _, shipped = load_recipe("demo")
    text = shipped.read_text()
    assert "sft: {finetune: {base: pre}}" in text
    path = tmp_path / "demo.yaml"
    path.write_text(text.replace("sft: {finetune: {base: pre}}", "sft: {finetune: {base: pre, settings: {epochs: 1}}}"))
    recipe, path = load_recipe(path)
    run_recipe(recipe, tmp_path / "one", recipe_path=path)
    summary = run_recipe(recipe, tmp_path / "ray", recipe_path=path, ray="local")
    assert summary.workers == 2 and summary.total == summary.n_configs * summary.n_prompts
    assert _all_rows(tmp_path / "ray") == _all_rows(tmp_path / "one")


def test_a_worker_with_other_weights_is_one_error_naming_the_model(tmp_path, cluster, tiny_recipe, monkeypatch) -> None:
    """The driver's fingerprints planted wrong: each worker loads the real models, finds them other
    than the driver's, and its own error (not Ray's wrapper) reaches the caller."""
    monkeypatch.setattr("graftlens.experiments.runner.model_fingerprint", lambda model: "planted")
    recipe, path = load_recipe(tiny_recipe)
    with pytest.raises(DistributedError, match="loaded other weights for model 'pre' than the driver"):
        run_recipe(recipe, tmp_path / "run", recipe_path=path, ray="local")


def test_a_worker_with_other_package_versions_refuses(tmp_path, tiny_recipe) -> None:
    from dataclasses import replace

    from graftlens.experiments.distributed import ScoringWorker, WorkerSetup
    from graftlens.provenance import run_versions

    recipe, path = load_recipe(tiny_recipe)
    setup = WorkerSetup(recipe, path.parent, "cpu", [], [], None, {}, 0, 1)
    worker = ScoringWorker(replace(setup, versions={**run_versions(), "torch": "1.0.0"}))
    with pytest.raises(DistributedError, match=r"has torch \S+, the driver 1.0.0: install the same versions on every node"):
        worker.ready()
