"""The benchmark scripts still run against the library as it is (on tiny inputs; nothing timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_sweep_benchmark_runs_on_a_cpu(embedded, graftlens_cache) -> None:
    """Its CPU check: a 2-layer model of the Llama kind, 16 prompts of the large recipe's data."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_gpu_sweep.py"),
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--max-prompts",
            "16",
            "--batch-size",
            "8",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "GRAFTLENS_CACHE": graftlens_cache},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["prompts"] == 16 and out["configurations"] == 7 and out["prompt_configurations_per_s"] > 0


def test_every_benchmark_script_imports_what_it_uses() -> None:
    """A benchmark that names a function the library no longer has fails here, not when someone
    next measures with it (each script in a fresh interpreter, its ``main`` not run)."""
    scripts = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run(
        [sys.executable, "-c", code, *scripts], cwd=ROOT / "benchmarks", capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
