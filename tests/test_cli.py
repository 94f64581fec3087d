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
