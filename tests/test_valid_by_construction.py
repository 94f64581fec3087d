"""Numbers that are valid YAML but impossible for the model are refused before anything is scored:
one error naming the sweep, the field, the value and the bound; nothing left behind.

Each case here is one a hostile but fair user found on an earlier version (named in CHANGELOG.md)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graftlens.cli import app
from graftlens.configfiles import ConfigFileError
from graftlens.experiments import load_recipe, run_recipe
from graftlens.results.store import ResultsStore

runner = CliRunner()


def _known_recipe(path: Path, model_dir: str, sweep: str, batch_size: int = 64) -> Path:
    path.write_text(
        textwrap.dedent(f"""\
        name: tiny-checks
        data: {{known_facts: shipped}}
        models:
          pre: {{spec: {model_dir}}}
        recipient: pre
        eval: {{batch_size: {batch_size}, bootstrap: 20, metric: top10}}
        configs:
          - {{name: clean, model: pre}}
        sweeps:
          - {sweep}
        """)
    )
    return path


def _et_recipe(path: Path, model_dir: str, sweep: str, pairs: str = "[corrupted]") -> Path:
    path.write_text(
        textwrap.dedent(f"""\
        name: tiny-et-checks
        data: {{entity_tracking: {{boxes: [3], examples: 4, seed: 0, pairs: {pairs}}}}}
        models:
          pre: {{spec: {model_dir}}}
          other: {{spec: {model_dir}}}
        recipient: pre
        eval: {{batch_size: 8, bootstrap: 20, metric: top1}}
        configs:
          - {{name: clean, model: pre}}
        sweeps:
          - {sweep}
        """)
    )
    return path


def _one_error_and_nothing_left(path: Path, out: Path, message: str) -> None:
    result = runner.invoke(app, ["run", str(path), "--out", str(out)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and message in errors[0], result.output
    assert not out.exists(), "a refused run leaves no run directory behind"


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        # head-mappings, top_k larger than the vocabulary: scored every fact 1.000 with exit 0.
        (
            "{kind: head_mappings, layers: [2, 3], top_k: 100000000}",
            "sweeps[1] (head_mappings) top_k: 100000000 is more than the vocabulary of model 'pre' (320 tokens)",
        ),
        # knockout, a window wider than the model: every layer point the same knockout, flat curves.
        (
            "{kind: knockout, baseline: clean, window: 1000, sources: {s: subject}}",
            "sweeps[1] (knockout) window: a window of 1000 layers is wider than model 'pre' (4 layers)",
        ),
        ("{kind: layer_window, donor: pre, components: [mlp], window: 5}", "sweeps[1] (layer_window) window: a window of 5"),
        ("{kind: enrichment, window: 2, read_layer: -5}", "sweeps[1] (enrichment) read_layer: -5 is not a layer"),
        ("{kind: cmap, donor: pre, heads: [4]}", "sweeps[1] (cmap) heads: 4 is not a head of model 'pre' (0..3)"),
        ("{kind: cmap, donor: pre, layers: [all, half3]}", "sweeps[1] (cmap) layers: bad layer group 'half3'"),
    ],
)
def test_numbers_beyond_the_model_are_refused_before_scoring(tmp_path, text_model_dir, graftlens_cache, sweep, message):
    path = _known_recipe(tmp_path / "r.yaml", text_model_dir, sweep)
    _one_error_and_nothing_left(path, tmp_path / "run", message)


def test_circuit_sizes_beyond_the_heads_fail_before_the_first_stage(tmp_path, et_model_dir, graftlens_cache):
    """et-circuit, sizes.value_fetchers of 271 on a model of 270 heads scored a whole stage (82 s)
    before failing with an error that named no sweep or field."""
    sweep = "{kind: et_circuit, plain: clean, sizes: {value_fetchers: 17}, random: 1, mean_prompts: 4}"
    path = _et_recipe(tmp_path / "r.yaml", et_model_dir, sweep)
    message = "sweeps[1] (et_circuit) sizes.value_fetchers: 17 heads are more than model 'pre' has (4 layers × 4 = 16)"
    _one_error_and_nothing_left(path, tmp_path / "run", message)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "'inf'", "'NaN'"])
def test_every_number_of_a_recipe_is_finite(tmp_path, et_model_dir, value):
    """et-dcm, lr: .inf trained every mask to 0.0 without a word (``Field(gt=0)`` lets infinity through)."""
    sweep = f"{{kind: dcm, circuit: shipped:smollm2-135m, lr: {value}}}"
    path = _et_recipe(tmp_path / "r.yaml", et_model_dir, sweep, "[position]")
    with pytest.raises(ConfigFileError, match=r"recipe setting 'sweeps\.0\.lr'.*finite number"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("eval.bootstrap", "eval: {bootstrap: .inf}"),
        (
            "models.sft.finetune.settings.learning_rate",
            "models: {pre: {spec: x}, sft: {finetune: {base: pre, settings: {learning_rate: .nan}}}}",
        ),
        ("sweeps.0.lam", "sweeps: [{kind: dcm, circuit: c, lam: .inf}]"),
        ("data.entity_tracking.boxes.1", "data: {entity_tracking: {boxes: [2, .inf]}}"),
    ],
)
def test_non_finite_numbers_are_refused_by_one_rule_wherever_they_stand(tmp_path, where, text):
    path = tmp_path / "r.yaml"
    models = "" if text.startswith("models:") else "models: {pre: {spec: x}}\n"
    path.write_text(f"name: r\n{models}recipient: pre\nconfigs: [{{name: a}}]\n{text}\n")
    with pytest.raises(ConfigFileError, match=rf"'{where}'.*is not a finite number"):
        load_recipe(path)


def _circuit(path: Path, positions: str, group: str = "value_fetchers") -> Path:
    path.write_text(json.dumps({"groups": {group: {"positions": positions, "heads": [[3, 1], [2, 0]]}}}))
    return path


@pytest.mark.parametrize(
    ("sweep", "pairs", "positions", "message"),
    [
        # et-dcm read a circuit file whose group positions was NOSPAN, and ignored it.
        (
            "{kind: dcm, circuit: CIRCUIT, head_groups: [value_fetchers], desiderata: [position]}",
            "[position]",
            "NOSPAN",
            "group 'value_fetchers' has positions 'NOSPAN', but dcm works at each group's own positions",
        ),
        # ... or a valid selector other than the group's own: dcm works at the group's positions.
        (
            "{kind: dcm, circuit: CIRCUIT, head_groups: [value_fetchers], desiderata: [position]}",
            "[position]",
            "query_box",
            "group 'value_fetchers' has positions 'query_box', but dcm works at each group's own positions",
        ),
        # circuit-cmap reads the field: a selector the prompts lack fails before scoring, not in the readout.
        (
            "{kind: circuit_cmap, donor: other, circuit: CIRCUIT, head_groups: [value_fetchers]}",
            "[corrupted]",
            "subject",
            "has no span 'subject'",
        ),
        (
            "{kind: circuit_cmap, donor: other, circuit: CIRCUIT, head_groups: [value_fetchers]}",
            "[corrupted]",
            "((",
            "group 'value_fetchers', positions '(('",
        ),
        # dcm trains on pairs of its own box count, made only in the readout: checked before scoring.
        (
            "{kind: dcm, circuit: CIRCUIT, head_groups: [value_fetchers], desiderata: [position], boxes: 40}",
            "[position]",
            "LT",
            "dcm boxes: the tokenizer has only",
        ),
    ],
)
def test_circuit_files_are_validated_in_full(tmp_path, et_model_dir, graftlens_cache, sweep, pairs, positions, message):
    circuit = _circuit(tmp_path / "circuit.json", positions)
    path = _et_recipe(tmp_path / "r.yaml", et_model_dir, sweep.replace("CIRCUIT", str(circuit)), pairs)
    _one_error_and_nothing_left(path, tmp_path / "run", message)


def test_a_rerun_with_another_batch_size_says_why_it_cannot_resume(tmp_path, text_model_dir, graftlens_cache):
    """A rerun with only eval.batch_size changed was refused as "another recipe", without a reason."""
    sweep = "{kind: lens, points: [resid_post]}"
    first = _known_recipe(tmp_path / "a.yaml", text_model_dir, sweep, batch_size=64)
    run_recipe(load_recipe(first)[0], tmp_path / "run", recipe_path=first)
    second = _known_recipe(tmp_path / "b.yaml", text_model_dir, sweep, batch_size=16)
    result = runner.invoke(app, ["run", str(second), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "differs in eval.batch_size (64 → 16)" in text
    assert "changes stored values in their last digits" in text and "set eval.batch_size back to 64 to resume" in text
    third = _known_recipe(tmp_path / "c.yaml", text_model_dir, "{kind: lens, points: [mlp_out]}")
    result = runner.invoke(app, ["run", str(third), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "differs in sweeps[0].points[0] (resid_post → mlp_out)" in " ".join(result.output.split())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, text_model_dir, donor_dir) -> Path:
    """A small finished run of three methods (knockout, lens, CMAP) on tiny llamas."""
    d = tmp_path_factory.mktemp("verify")
    path = _known_recipe(d / "r.yaml", text_model_dir, "{kind: knockout, baseline: clean, window: 2, sources: {s: subject}}")
    text = path.read_text().replace("  pre: {spec:", f"  other: {{spec: {donor_dir}}}\n  pre: {{spec:")
    text += "  - {kind: lens, points: [resid_post]}\n  - {kind: cmap, donor: other, layers: [half1, half2]}\n"
    path.write_text(text)
    result = runner.invoke(app, ["run", str(path), "--out", str(d / "run")])
    assert result.exit_code == 0, result.output
    return d / "run"


def test_verify_passes_on_an_untouched_run(finished_run):
    result = runner.invoke(app, ["verify", str(finished_run), "--rows", "100000"])
    assert result.exit_code == 0, result.output
    with ResultsStore.open_existing(finished_run) as store:
        total = store.total()
    text = " ".join(result.output.split())
    assert total == 11 * 161
    assert f"verified: {total} of {total} stored rows re-scored; {total} match within 1e-05; all {total} rows" in text
    again = runner.invoke(app, ["verify", str(finished_run), "--rows", "all"])
    assert again.exit_code == 0 and f"{total} of {total} stored rows re-scored;" in " ".join(again.output.split())


def test_verify_fails_on_a_row_edited_in_sqlite_and_names_it(finished_run, tmp_path):
    import shutil
    import sqlite3

    tampered = tmp_path / "run"
    shutil.copytree(finished_run, tampered)
    with sqlite3.connect(tampered / "results.sqlite") as conn:
        config, example, prob = conn.execute(
            "SELECT config, example, target_prob FROM results WHERE config LIKE 'knockout%' ORDER BY rowid LIMIT 1 OFFSET 40"
        ).fetchone()
        conn.execute("UPDATE results SET target_prob = ? WHERE config = ? AND example = ?", (prob * 1.01, config, example))
    result = runner.invoke(app, ["verify", str(tampered), "--rows", "100000"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"'{config}' / '{example}': target_prob stored {prob * 1.01}, re-scored {prob}" in text, text
    # A sample of rows: the seed decides which; the summary counts what it checked.
    result = runner.invoke(app, ["verify", str(tampered), "--rows", "5", "--seed", "3"])
    text = " ".join(result.output.split())
    assert "5 of 1771 stored rows re-scored (a sample drawn with seed 3; --rows all re-scores every one)" in text


def _tampered(finished_run, tmp_path, sql: str, *args):
    import shutil
    import sqlite3

    tampered = tmp_path / "run"
    shutil.copytree(finished_run, tampered)
    with sqlite3.connect(tampered / "results.sqlite") as conn:
        conn.execute(sql, args)
    return tampered


def test_verify_compares_the_top_tokens(finished_run, tmp_path):
    """A row whose top tokens were replaced (its probabilities untouched) is a mismatch."""
    import json

    with ResultsStore.open_existing(finished_run) as store:
        row = store.rows(store.get_meta("run"))[7]
    swapped = json.dumps(list(reversed(row.top_tokens)))
    tampered = _tampered(
        finished_run,
        tmp_path,
        "UPDATE results SET top_tokens = ? WHERE config = ? AND example = ?",
        swapped,
        row.config,
        row.example,
    )
    result = runner.invoke(app, ["verify", str(tampered), "--rows", "all"])
    assert result.exit_code == 1, result.output
    assert f"'{row.config}' / '{row.example}': top_tokens stored" in " ".join(result.output.split())


def test_verify_reports_a_configuration_missing_from_the_store(finished_run, tmp_path):
    with ResultsStore.open_existing(finished_run) as store:
        config = store.rows(store.get_meta("run"))[0].config
    tampered = _tampered(finished_run, tmp_path, "DELETE FROM results WHERE config = ?", config)
    result = runner.invoke(app, ["verify", str(tampered)])
    assert result.exit_code == 1, result.output
    assert f"configuration '{config}': 161 of its rows are missing" in " ".join(result.output.split())


def test_verify_rows_must_be_a_number_or_all(finished_run):
    result = runner.invoke(app, ["verify", str(finished_run), "--rows", "ten"])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "error: --rows takes a number of rows or all, not 'ten'"
    ]


def test_verify_refuses_other_weights_by_fingerprint(finished_run, tmp_path, monkeypatch):
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(finished_run, moved)
    monkeypatch.setattr("graftlens.experiments.prepare.model_fingerprint", lambda model: "other")
    monkeypatch.setattr("graftlens.experiments.prepare.legacy_fingerprints", lambda model, paths=(): {"older"})
    result = runner.invoke(app, ["verify", str(moved)])
    assert result.exit_code == 2 and "loads other weights than the run was scored with" in result.output


@pytest.mark.embedded
def test_verify_passes_on_the_demo_run(tmp_path, embedded):
    """The demo recipe on the embedded model (its finetune cut to one epoch, as elsewhere in the
    tests, so that the cached finetune is shared), verified on a sample of its rows."""
    _, shipped = load_recipe("demo")
    path = tmp_path / "demo.yaml"
    one_epoch = "sft: {finetune: {base: pre, settings: {epochs: 1}}}"
    path.write_text(shipped.read_text().replace("sft: {finetune: {base: pre}}", one_epoch))
    recipe, path = load_recipe(path)
    run_recipe(recipe, tmp_path / "run", recipe_path=path)
    result = runner.invoke(app, ["verify", str(tmp_path / "run"), "--rows", "24"])
    assert result.exit_code == 0, result.output
    assert "verified: 24 of" in " ".join(result.output.split())


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip() and not line.startswith(("recipe ", "("))]


def test_a_store_damaged_in_the_middle_is_one_short_line(finished_run, tmp_path):
    """It printed sqlite's whole quick_check report (101 lines)."""
    import shutil

    damaged = tmp_path / "run"
    shutil.copytree(finished_run, damaged)
    store = damaged / "results.sqlite"
    data = bytearray(store.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    for page in range(middle, middle + 8 * 4096, 4096):  # the cell pointers of eight pages scrambled
        data[page + 8 : page + 200] = bytes(i * 37 % 256 for i in range(192))
    store.write_bytes(bytes(data))
    (damaged / "results.sqlite-wal").unlink(missing_ok=True)
    result = runner.invoke(app, ["export", str(damaged), "--csv", str(tmp_path / "out.csv")])
    assert result.exit_code == 2
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "is damaged (sqlite's check found" in lines[0] and "problem" in lines[0], result.output
    assert "--restart` to move it aside" in lines[0] and len(lines[0]) < 400


def test_a_full_disk_names_the_file(finished_run, tmp_path, monkeypatch):
    """It printed `No space left on device: — free some space…` without the file name."""
    import errno
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() reports it: no file name

    monkeypatch.setattr(Path, "write_text", full)
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 2
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "No space left on device: " in lines[0] and "free some space" in lines[0], result.output
    assert str(run) in lines[0].replace("\n", "")


def test_an_unreachable_hub_is_one_line_at_once(monkeypatch):
    """It printed 22 lines of retry noise over 52 s before its error."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:1")
    t0 = time.perf_counter()
    result = runner.invoke(app, ["info", "graftlens-tests/no-such-model"])
    assert result.exit_code == 2 and time.perf_counter() - t0 < 20
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "not reachable: http://127.0.0.1:1" in lines[0], result.output


def test_library_detail_waits_behind_debug(monkeypatch, tmp_path):
    """A library's report on further lines (YAML's, torch's) is one line; --debug shows it all."""
    from graftlens.errors import ModelLoadError

    def detailed(*args, **kwargs):
        raise ModelLoadError("could not load model 'x': RuntimeError: size mismatch:\n\tline two\n\tline three")

    monkeypatch.setenv("GRAFTLENS_DEBUG", "0")  # `--debug` sets it for the process; restored after the test
    monkeypatch.setattr("graftlens.models.load_model", detailed)
    result = runner.invoke(app, ["info", "x"])
    lines = _error_lines(result.output)
    assert len(lines) == 1 and lines[0].endswith("size mismatch (rerun with --debug for the details)"), result.output
    result = runner.invoke(app, ["--debug", "info", "x"])
    assert "line three" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: {pre: {spec: x}\nrecipient: pre\n")
    result = runner.invoke(app, ["run", str(bad)])
    lines = _error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1 and "is not valid YAML (line 3, column 1)" in lines[0], result.output
