"""Your own checkpoints and prompts: prompt files (JSONL, CSV) with marked spans, recipes whose
relative model and data paths are read from the recipe's folder, `graftlens recipes show`, and
progress lines on a log."""

from __future__ import annotations

import io
import json

import pytest
from typer.testing import CliRunner

from graftlens.cli import app
from graftlens.data.prompt_files import load_prompt_file, tokenize_prompt_file
from graftlens.errors import DataError
from graftlens.experiments import load_recipe
from graftlens.experiments.progress import PhaseProgress
from graftlens.models import tiny_model

runner = CliRunner()


def test_jsonl_and_csv_prompt_files_give_the_same_prompts(tmp_path) -> None:
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"text": "[FE:Lori Barker] stars in", "target": " Gregory", "id": "a"})
        + "\n\n"
        + json.dumps({"text": "Q: Who is [FE:Ann]?", "target": " Bo", "template": "qa"})
        + "\n"
    )
    (tmp_path / "p.csv").write_text(
        'text,target,id,template\n"[FE:Lori Barker] stars in",Gregory,a,p\n"Q: Who is [FE:Ann]?",Bo,,qa\n'
    )
    jsonl, csv = load_prompt_file(tmp_path / "p.jsonl"), load_prompt_file(tmp_path / "p.csv")
    assert [(p.text, p.target, p.spans) for p in jsonl] == [(p.text, p.target, p.spans) for p in csv]
    assert jsonl[0].spans == {"FE": (0, 11)} and jsonl[1].id == "p-3" and jsonl[1].template == "qa"
    tokenized = tokenize_prompt_file(jsonl, tiny_model("llama").tokenizer)
    assert tokenized[0].spans["FE"] == (0, 11) and tokenized[0].meta == {"template": "p"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a b"}\n', "line 1: no target"),
        ('{"target": " x"}\n', "line 1: no text"),
        ("not json\n", "line 1: not JSON"),
        ('{"text": "[FE:a b", "target": " x"}\n', "line 1: .* not closed"),
        ('{"text": "a", "target": " x", "id": "k"}\n{"text": "b", "target": " y", "id": "k"}\n', "line 2: id 'k' is used twice"),
        ("", "holds no prompt"),
    ],
)
def test_a_bad_prompt_file_line_is_one_error_naming_it(tmp_path, content, message) -> None:
    (tmp_path / "p.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        load_prompt_file(tmp_path / "p.jsonl")


def test_a_recipe_reads_its_models_and_prompts_from_its_own_folder(tmp_path, monkeypatch, graftlens_cache) -> None:
    """Run from another directory, a recipe's relative paths still name the files beside it."""
    folder = tmp_path / "study"
    tiny_model("llama", 0).save(folder / "ckpt" / "pre")
    tiny_model("llama", 1).save(folder / "ckpt" / "sft")
    (folder / "prompts.jsonl").write_text(
        json.dumps({"text": "[FE:Lori Barker] stars in a movie alongside", "target": " Gregory"}) + "\n"
    )
    (folder / "r.yaml").write_text(
        "name: own\ndata: {prompts: prompts.jsonl}\nmodels:\n  pre: {spec: ckpt/pre}\n  sft: {spec: ckpt/sft}\n"
        "recipient: pre\neval: {bootstrap: 0}\nconfigs:\n  - {name: PRE, model: pre}\n"
        "sweeps:\n  - {kind: positions, donor: sft, sets: [FE, FE+LT]}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["run", str(folder / "r.yaml"), "--out", "run"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((elsewhere / "run" / "manifest.json").read_text())
    assert manifest["data"]["n_prompts"] == 1 and manifest["n_configs"] == 3
    recipe, _ = load_recipe(folder / "r.yaml")
    assert recipe.data.prompts == "prompts.jsonl"


def test_a_prompt_file_cannot_be_finetuned_on(tmp_path) -> None:
    (tmp_path / "r.yaml").write_text(
        "name: own\ndata: {prompts: p.jsonl}\nmodels:\n  pre: {spec: smollm2-135m}\n  sft: {finetune: {base: pre}}\n"
        "recipient: pre\nconfigs:\n  - {name: PRE, model: pre}\n"
    )
    result = runner.invoke(app, ["run", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2 and "a prompt file's prompts have no training documents" in " ".join(result.output.split())


def test_recipes_show_prints_a_shipped_recipe_to_copy() -> None:
    _, path = load_recipe("position-grafting")
    result = runner.invoke(app, ["recipes", "show", "position-grafting"])
    assert result.exit_code == 0 and result.output == path.read_text()
    result = runner.invoke(app, ["recipes", "show", "no-such"])
    assert result.exit_code == 2 and "no shipped recipe 'no-such'" in result.output


def test_progress_on_a_log_is_a_plain_line_at_most_every_30_seconds(monkeypatch) -> None:
    clock = iter([0.0, 1.0, 2.0, 31.0, 32.0, 70.0])
    monkeypatch.setattr("graftlens.experiments.progress.time.monotonic", lambda: next(clock))
    log = io.StringIO()  # not a terminal
    progress = PhaseProgress(log)
    for step in (0, 1, 2, 3, 4, 5):
        progress("finetuning sft", step, 5, 1.5)
    lines = log.getvalue().splitlines()
    assert lines[0] == "finetuning sft: 5 steps to go"
    assert lines[1].startswith("finetuning sft: step 1/5 (20%), 1.00 s/step, loss 1.500")
    assert [line.split(":")[1].split(",")[0] for line in lines[2:]] == [" step 3/5 (60%)", " step 5/5 (100%)"]
    assert lines[-1].endswith("done")
