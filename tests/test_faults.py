"""The fault battery: malformed inputs and broken environments, each through the CLI.

Every case must end with exit status 2, exactly one ``error:`` line naming the culprit, no
traceback, and nothing written that was not there before. Filesystem faults that need root to
provoke (a full disk, a read-only place) are injected as the OSError the OS would raise."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graftlens.cli import app

runner = CliRunner()


@dataclass
class Workspace:
    root: Path
    model: str  # the tiny text llama
    data: Path  # a valid dataset directory (a copy the case may damage)
    run: Path  # a finished run directory (a copy the case may damage)

    def recipe(self, *edits: tuple[str, str], text: str | None = None, name: str = "recipe.yaml") -> str:
        body = text if text is not None else BASE_RECIPE.format(model=self.model, data=self.data)
        for old, new in edits:
            assert old in body, old
            body = body.replace(old, new)
        path = self.root / name
        path.write_text(body)
        return str(path)

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def edit_jsonl(self, name: str, change: Callable[[list[dict]], None]) -> None:
        path = self.data / name
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        change(rows)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


BASE_RECIPE = textwrap.dedent(
    """\
    name: fault
    data: {{dir: {data}}}
    models:
      pre: {{spec: {model}}}
      other: {{spec: {model}}}
    recipient: pre
    eval: {{batch_size: 8, bootstrap: 0}}
    configs:
      - {{name: PRE, model: pre}}
      - name: g
        grafts: [{{donor: other, components: o+mlp, layers: half2, positions: FE+LT}}]
    """
)

KNOWN_FACT = {"id": "k1", "relation": "capital", "subject": "France", "prompt": "The capital of France is", "target": " Paris"}


def _known_recipe(ws: Workspace, facts: str, metric: str = "top5") -> str:
    return ws.recipe(
        text=textwrap.dedent(
            f"""\
            name: known
            data: {{known_facts: {facts}}}
            models:
              pre: {{spec: {ws.model}}}
            recipient: pre
            eval: {{batch_size: 8, bootstrap: 0, metric: {metric}}}
            configs:
              - {{name: clean, model: pre}}
            """
        )
    )


def _other_shape_model(ws: Workspace, **changes) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(ws.model)
    for key, value in changes.items():
        setattr(config, key, value)
    path = ws.root / "other-shape"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(ws.model).save_pretrained(path)
    return str(path)


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(50_000))


def _truncate(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _fail_replace(code: int, message: str):
    def fake_replace(src, dst):
        raise OSError(code, message, str(dst))

    return fake_replace


@dataclass
class Case:
    args: Callable[[Workspace], list[str]]
    culprits: tuple[str, ...]
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    extra: dict = field(default_factory=dict)


def _run(recipe: Callable[[Workspace], str], *extra: str) -> Callable[[Workspace], list[str]]:
    return lambda ws: ["run", recipe(ws), "--out", str(ws.root / "out"), *extra]


CASES: dict[str, Case] = {
    # --- recipes ---------------------------------------------------------------------------------
    "unknown top-level key": Case(_run(lambda ws: ws.recipe(("recipient: pre", "recipient: pre\nrecipent: x"))), ("recipent",)),
    "config names an unknown model": Case(
        _run(lambda ws: ws.recipe(("{name: PRE, model: pre}", "{name: PRE, model: pree}"))), ("'pree'",)
    ),
    "unknown component": Case(_run(lambda ws: ws.recipe(("components: o+mlp", "components: o+mpl"))), ("mpl",)),
    "unknown layer group": Case(_run(lambda ws: ws.recipe(("layers: half2", "layers: half3"))), ("half3",)),
    "malformed position selector": Case(_run(lambda ws: ws.recipe(("positions: FE+LT", "positions: FE+"))), ("FE+",)),
    "unknown donor": Case(_run(lambda ws: ws.recipe(("donor: other", "donor: othr"))), ("othr",)),
    "negative bootstrap": Case(_run(lambda ws: ws.recipe(("bootstrap: 0", "bootstrap: -1"))), ("eval.bootstrap",)),
    "unknown metric": Case(_run(lambda ws: ws.recipe(("bootstrap: 0", "bootstrap: 0, metric: top7"))), ("eval.metric",)),
    "two configurations with one name": Case(
        _run(lambda ws: ws.recipe(("name: g", "name: PRE"))), ("two configurations are named 'PRE'",)
    ),
    "unknown sweep kind": Case(
        _run(lambda ws: ws.recipe(("configs:", "sweeps:\n  - {kind: positons, donor: other}\nconfigs:"))), ("positons",)
    ),
    "missing recipe file": Case(lambda ws: ["run", str(ws.root / "nope.yaml"), "--out", str(ws.root / "out")], ("nope.yaml",)),
    "recipe is not YAML": Case(_run(lambda ws: ws.recipe(text="name: [unclosed\n")), ("not valid YAML",)),
    "recipe is not UTF-8": Case(
        _run(lambda ws: ws.file("latin1.yaml", "name: caf\xe9\n".encode("latin-1"))), ("latin1.yaml:1", "not UTF-8")
    ),
    "recipe is a list": Case(_run(lambda ws: ws.recipe(text="- a\n- b\n")), ("must be a mapping",)),
    "two data sources": Case(
        _run(lambda ws: ws.recipe(("data: {dir:", "data: {known_facts: shipped, dir:"))),
        ("at most one of 'dir', 'known_facts', 'prompts' or 'entity_tracking'",),
    ),
    # --- datasets --------------------------------------------------------------------------------
    "dataset directory missing": Case(
        _run(lambda ws: ws.recipe((str(ws.data), str(ws.root / "no-data")))), ("no-data", "dataset.json is missing")
    ),
    "dataset with a duplicated example id": Case(
        _run(
            lambda ws: (
                ws.edit_jsonl("test.jsonl", lambda rows: rows.__setitem__(1, {**rows[1], "id": rows[0]["id"]})),
                ws.recipe(),
            )[1]
        ),
        ("test.jsonl", "appears more than once"),
    ),
    "dataset with char_spans of the wrong type": Case(
        _run(
            lambda ws: (ws.edit_jsonl("test.jsonl", lambda rows: rows[0].__setitem__("char_spans", {"FE": "0-4"})), ws.recipe())[
                1
            ]
        ),
        ("test.jsonl:1", "char_spans['FE']"),
    ),
    "dataset with a number where text belongs": Case(
        _run(lambda ws: (ws.edit_jsonl("facts.jsonl", lambda rows: rows[0].__setitem__("year", 1999)), ws.recipe())[1]),
        ("facts.jsonl:1", "'year' must be a string"),
    ),
    "dataset file not UTF-8": Case(
        _run(
            lambda ws: ((ws.data / "test.jsonl").write_bytes((ws.data / "test.jsonl").read_bytes() + b"\xff\n"), ws.recipe())[1]
        ),
        ("test.jsonl", "not UTF-8"),
    ),
    "dataset edited after it was made": Case(
        _run(lambda ws: (ws.edit_jsonl("facts.jsonl", lambda rows: rows[0].__setitem__("title", "Other")), ws.recipe())[1]),
        ("was edited after it was made",),
    ),
    "known facts not UTF-8": Case(
        _run(lambda ws: _known_recipe(ws, ws.file("k/facts.jsonl", b'{"id": "\xff"}\n'))), ("facts.jsonl:1", "not UTF-8")
    ),
    "known facts with a duplicated id": Case(
        _run(lambda ws: _known_recipe(ws, ws.file("k/facts.jsonl", (json.dumps(KNOWN_FACT) + "\n") * 2))), ("duplicate id 'k1'",)
    ),
    "entity not found in its prompt": Case(
        _run(lambda ws: _known_recipe(ws, ws.file("k/facts.jsonl", json.dumps({**KNOWN_FACT, "subject": "Spain"}) + "\n"))),
        ("subject 'Spain'", "is not in its prompt"),
    ),
    "attribute rate without known facts": Case(
        _run(lambda ws: ws.recipe(("bootstrap: 0", "bootstrap: 0, metric: attribute_rate"))),
        ("attribute_rate needs known facts",),
    ),
    "attribute rate without subject texts": Case(
        _run(lambda ws: _known_recipe(ws, ws.file("k/facts.jsonl", json.dumps(KNOWN_FACT) + "\n"), "attribute_rate")),
        ("put subject_texts.jsonl beside",),
    ),
    "prompt longer than the model's context": Case(
        _run(
            lambda ws: _known_recipe(
                ws,
                ws.file("k/facts.jsonl", json.dumps({**KNOWN_FACT, "prompt": "x " * 2100 + "The capital of France is"}) + "\n"),
            )
        ),
        ("prompt 'k1'", "more than model 'pre' takes (2048 positions)"),
    ),
    "template with a format spec": Case(
        lambda ws: [
            "data",
            "make",
            str(ws.root / "made"),
            "--templates",
            ws.file("t.yaml", "- {name: t, kind: test, text: '{first_actor:>40} stars with'}\n"),
        ],
        ("'t'", "{first_actor:>40}", "format specs and conversions are not allowed"),
    ),
    "template with a conversion": Case(
        lambda ws: [
            "data",
            "make",
            str(ws.root / "made"),
            "--templates",
            ws.file("t.yaml", "- {name: t, kind: test, text: '{first_actor!r} stars with'}\n"),
        ],
        ("{first_actor!r}",),
    ),
    "template with an unknown slot": Case(
        lambda ws: [
            "data",
            "make",
            str(ws.root / "made"),
            "--templates",
            ws.file("t.yaml", "- {name: t, kind: test, text: '{first_actress} stars with'}\n"),
        ],
        ("'first_actress'",),
    ),
    "unknown fact kind": Case(lambda ws: ["data", "make", str(ws.root / "made"), "--kind", "fake_aktors"], ("fake_aktors",)),
    "more facts than titles": Case(lambda ws: ["data", "make", str(ws.root / "made"), "--facts", "100000"], ("at most 900",)),
    "more facts than distinct names": Case(
        lambda ws: ["data", "make", str(ws.root / "made"), "--facts", "700"], ("at most 671",)
    ),
    "data show of a missing dataset": Case(
        lambda ws: ["data", "show", str(ws.root / "none")], ("none", "dataset.json is missing")
    ),
    # --- models and devices ---------------------------------------------------------------------
    "donor of other widths": Case(
        _run(
            lambda ws: ws.recipe(
                ("other: {spec: " + ws.model + "}", "other: {spec: " + _other_shape_model(ws, intermediate_size=64) + "}")
            )
        ),
        ("configuration 'g'", "has shape"),
    ),
    "donor with fewer layers": Case(
        _run(
            lambda ws: ws.recipe(
                ("other: {spec: " + ws.model + "}", "other: {spec: " + _other_shape_model(ws, num_hidden_layers=2) + "}")
            )
        ),
        ("configuration 'g'", "has no module"),
    ),
    "device that does not exist": Case(_run(lambda ws: ws.recipe(), "--device", "banana"), ("unknown device 'banana'",)),
    "CUDA without CUDA": Case(_run(lambda ws: ws.recipe(), "--device", "cuda:0"), ("'cuda:0'", "no CUDA device")),
    "unknown model spec": Case(lambda ws: ["info", "./no/such/model"], ("./no/such/model",)),
    "eval of a missing checkpoint": Case(lambda ws: ["eval", str(ws.root / "ckpt")], ("ckpt",)),
    "finetune split that does not exist": Case(
        lambda ws: ["finetune", "--model", ws.model, "--data", str(ws.data), "--split", "C"], ("split",)
    ),
    "finetune on a missing dataset": Case(
        lambda ws: ["finetune", "--model", ws.model, "--data", str(ws.root / "gone")], ("gone",)
    ),
    # --- run directories and stores -------------------------------------------------------------
    "--out names an existing file": Case(
        lambda ws: ["run", ws.recipe(), "--out", ws.file("a-file", "x")], ("a-file", "is a file")
    ),
    "run into a damaged store": Case(
        lambda ws: (_garbage(ws.run / "results.sqlite"), ["run", ws.recipe(), "--out", str(ws.run)])[1],
        ("results.sqlite is damaged", "--restart"),
    ),
    "report of a store overwritten with garbage": Case(
        lambda ws: (_garbage(ws.run / "results.sqlite"), ["report", str(ws.run)])[1], ("results.sqlite is damaged",)
    ),
    "report of a truncated store": Case(
        lambda ws: (_truncate(ws.run / "results.sqlite"), ["report", str(ws.run)])[1], ("results.sqlite is damaged",)
    ),
    "export of a truncated store": Case(
        lambda ws: (_truncate(ws.run / "results.sqlite"), ["export", str(ws.run), "--csv", str(ws.root / "x.csv")])[1],
        ("results.sqlite is damaged",),
    ),
    "report of a folder that is not a run": Case(lambda ws: ["report", str(ws.data)], ("is not a run directory",)),
    "export without a target": Case(lambda ws: ["export", str(ws.run)], ("--csv",)),
    "export --csv onto a folder": Case(
        lambda ws: ["export", str(ws.run), "--csv", str(ws.data)], ("Is a directory", str(Path("data")))
    ),
    "export onto a full disk": Case(
        lambda ws: ["export", str(ws.run), "--csv", str(ws.root / "full.csv")],
        ("No space left on device", "full.csv", "free some space"),
        patch=lambda mp: mp.setattr("graftlens.fileio.os.replace", _fail_replace(errno.ENOSPC, "No space left on device")),
    ),
    "export into a read-only folder": Case(
        lambda ws: ["export", str(ws.run), "--csv", str(ws.root / "ro.csv")],
        ("Permission denied", "ro.csv", "choose a place you may write to"),
        patch=lambda mp: mp.setattr("graftlens.fileio.os.replace", _fail_replace(errno.EACCES, "Permission denied")),
    ),
    "--workers without --ray": Case(_run(lambda ws: ws.recipe(), "--workers", "2"), ("--workers", "--ray")),
    "--ray where Ray is not installed": Case(
        _run(lambda ws: ws.recipe(), "--ray"),
        ("--ray needs Ray", "graftlens[ray]"),
        patch=lambda mp: mp.setitem(sys.modules, "ray", None),  # what `import ray` meets when it is missing
    ),
    "report onto a full disk": Case(
        lambda ws: ["report", str(ws.run)],
        ("No space left on device", "report.html"),
        patch=lambda mp: mp.setattr("graftlens.fileio.os.replace", _fail_replace(errno.ENOSPC, "No space left on device")),
    ),
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_fault_run(tmp_path_factory, text_model_dir, small_facts, graftlens_cache) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fault-base")
    data = small_facts.save(root / "data")
    recipe = root / "recipe.yaml"
    recipe.write_text(BASE_RECIPE.format(model=text_model_dir, data=data))
    result = runner.invoke(app, ["run", str(recipe), "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return data, root / "run"


@pytest.mark.parametrize("name", list(CASES))
def test_a_fault_is_one_line_naming_the_culprit(name, tmp_path, text_model_dir, finished_fault_run, monkeypatch) -> None:
    case = CASES[name]
    data, run = finished_fault_run
    ws = Workspace(tmp_path, text_model_dir, tmp_path / "data", tmp_path / "run")
    shutil.copytree(data, ws.data)
    shutil.copytree(run, ws.run)
    args = case.args(ws)  # builds the bad input
    before = _files(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    result = runner.invoke(app, args)
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for culprit in case.culprits:
        assert culprit in errors[0], (culprit, errors[0])
    assert _files(tmp_path) == before, "a failing command wrote or changed files"


def test_the_battery_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_an_unexpected_error_is_reported_as_a_bug_with_a_way_to_the_traceback(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr("graftlens.experiments.shipped_recipes", broken)
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 1
    assert "unexpected ZeroDivisionError: planted" in result.output and "--debug" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["--debug", "recipes"])
    assert isinstance(result.exception, ZeroDivisionError)  # with --debug the error propagates with its traceback
    monkeypatch.delenv("GRAFTLENS_DEBUG", raising=False)


def test_restart_moves_a_damaged_store_aside(tmp_path, text_model_dir, finished_fault_run) -> None:
    data, run = finished_fault_run
    shutil.copytree(run, tmp_path / "run")
    _garbage(tmp_path / "run" / "results.sqlite")
    damaged = (tmp_path / "run" / "results.sqlite").read_bytes()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BASE_RECIPE.format(model=text_model_dir, data=data))
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run"), "--restart"])
    assert result.exit_code == 0, result.output
    aside = list((tmp_path / "run").glob("results.sqlite.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept, never deleted
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--csv", str(tmp_path / "a.csv")])
    assert result.exit_code == 0
    runner.invoke(app, ["export", str(run), "--csv", str(tmp_path / "b.csv")])
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_a_failed_run_leaves_no_run_directory(tmp_path, text_model_dir, finished_fault_run) -> None:
    data, _ = finished_fault_run
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BASE_RECIPE.format(model=text_model_dir, data=data).replace("layers: half2", "layers: [9]"))
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "new-run")])
    assert result.exit_code == 2 and "layer 9" in result.output
    assert not (tmp_path / "new-run").exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from graftlens.results.lock import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_and_a_dead_holder_is_taken_over(tmp_path, text_model_dir, finished_fault_run) -> None:
    """Two real processes: while one holds the run directory, another run is refused at once,
    naming the holder; once the holder is killed (its lock dies with it), the run proceeds."""
    data, run = finished_fault_run
    shutil.copytree(run, tmp_path / "run")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BASE_RECIPE.format(model=text_model_dir, data=data))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
        assert result.exit_code == 2, result.output
        assert "is being written by another run" in result.output and f"process {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "already in the store" in result.output


def test_interrupt_says_what_was_kept(tmp_path, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("graftlens.experiments.shipped_recipes", interrupted)
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 130
    assert "interrupted: everything finished so far is kept; run the same command again" in result.output


def test_leftover_conversions_are_removed_on_the_next_start(tmp_path) -> None:
    from graftlens.models.embedded import remove_leftovers

    target = tmp_path / "models" / "smollm2"
    (tmp_path / "models" / "smollm2.abc123").mkdir(parents=True)
    (tmp_path / "models" / "smollm2.abc123" / "model.safetensors").write_bytes(b"half")
    (tmp_path / "models" / "smollm2.lock").write_text("")
    (tmp_path / "models" / "other.x1").mkdir()
    removed = remove_leftovers(target)
    assert [p.name for p in removed] == ["smollm2.abc123"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["other.x1", "smollm2.lock"]


def test_a_store_left_by_a_full_disk_stays_usable(tmp_path, text_model_dir, finished_fault_run, monkeypatch) -> None:
    """The disk fills while the third batch is committed: one line, exit 2; after space is freed
    the same command finishes, and the stored rows equal an uninterrupted run's."""
    import sqlite3

    from graftlens.results.store import ResultsStore

    data, run = finished_fault_run
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BASE_RECIPE.format(model=text_model_dir, data=data))
    add = ResultsStore.add
    calls = {"n": 0}

    def filling(self, run_id, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise sqlite3.OperationalError("database or disk is full")
        return add(self, run_id, rows)

    monkeypatch.setattr(ResultsStore, "add", filling)
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "database or disk is full" in errors[0] and "free some space" in errors[0]
    monkeypatch.setattr(ResultsStore, "add", add)
    result = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    for path, name in ((tmp_path / "run", "a.csv"), (run, "b.csv")):
        assert runner.invoke(app, ["export", str(path), "--csv", str(tmp_path / name)]).exit_code == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
