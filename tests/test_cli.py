"""The command line: info on tiny and embedded models, one clear error line on bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import save_tiny_model
from graftlens.cli import app

runner = CliRunner()


def test_info_on_a_local_gpt2(tmp_path) -> None:
    save_tiny_model("gpt2", tmp_path / "m")
    result = runner.invoke(app, ["info", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "GPT2LMHeadModel" in result.output
    assert "transformer.h.{i}.attn.c_attn[rows 0:32]" in result.output
    assert "transformer.h.{i}.attn.c_attn[rows 64:96]" in result.output


def test_bad_spec_is_one_clear_line_not_a_traceback() -> None:
    result = subprocess.run([sys.executable, "-m", "graftlens", "info", "./no/such/model"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "./no/such/model" in lines[0], result.stderr


@pytest.mark.embedded
def test_info_on_the_embedded_model(embedded) -> None:
    result = runner.invoke(app, ["info", "smollm2-135m"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    for expected in ("layers 30", "heads 9", "kv heads 3", "tied embeddings yes", "LlamaForCausalLM"):
        assert expected in out, expected


def test_data_make_show_finetune_eval(tmp_path, text_model_dir) -> None:
    data = tmp_path / "facts"
    result = runner.invoke(app, ["data", "make", str(data), "--facts", "4", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "4 facts, 88 training texts, 24 test prompts" in " ".join(result.output.split())
    result = runner.invoke(app, ["data", "show", str(data), "--n", "1"])
    assert result.exit_code == 0 and "test_alongside" in result.output, result.output
    out = tmp_path / "ft"
    args = ["finetune", "--model", text_model_dir, "--data", str(data), "--epochs", "1", "--batch-size", "8", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file() and "finetuned forward" in result.output
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "reused checkpoint" in result.output, result.output
    result = runner.invoke(app, ["eval", str(out), "--data", str(data), "--split", "B"])
    assert result.exit_code == 0, result.output
    assert "test_qa/forward" in result.output and "on 12 prompts" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "show", "no-such-dir"], "dataset.json is missing"),
        (["data", "make", "out", "--kind", "cartoons"], "unknown fact kind 'cartoons'"),
        (["finetune", "--data", "no-such-dir"], "dataset.json is missing"),
    ],
)
def test_data_and_finetune_errors_are_one_line(tmp_path, args, message) -> None:
    result = subprocess.run([sys.executable, "-m", "graftlens", *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and message in result.stderr, result.stderr


def test_bad_finetune_setting_and_template_file_name_the_culprit(tmp_path, text_model_dir) -> None:
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("epochs: 2\nlearnig_rate: 0.1\n")
    result = runner.invoke(app, ["finetune", "--model", text_model_dir, "--config", str(cfg)])
    assert result.exit_code == 2 and "learnig_rate" in result.output and "ft.yaml" in result.output, result.output
    templates = tmp_path / "t.yaml"
    templates.write_text("- {name: x, kind: qa, text: '{first_actor} met {second_actor} on {planet}'}\n")
    result = runner.invoke(app, ["data", "make", str(tmp_path / "d"), "--templates", str(templates)])
    assert result.exit_code == 2 and "unknown slot(s) 'planet'" in result.output and "t.yaml" in result.output, result.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["verify", "runs/x", "--seed", "ten"], "Invalid value for '--seed'"),
        (["run", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
        (["data", "nosuch"], "No such command 'nosuch'"),
        (["run"], "Missing argument"),
    ],
)
def test_a_command_line_that_does_not_parse_is_one_error_line(args, said) -> None:
    """Click's usage box would be several lines; every fault of the CLI is one ``error:`` line."""
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], result.output
