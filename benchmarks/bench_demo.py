"""`graftlens demo` timed cold (empty cache: GGUF conversion, dataset, finetuning, sweep, report)
and warm (everything cached), plus the headline numbers of its results.

Three runs in fresh processes: cold (empty cache and run directory), warm (same command again:
the store is complete, only the report is redrawn), and warm with a new run directory (cached
model and checkpoint, all 57 configurations scored again). Prints one JSON object.
Usage: python benchmarks/bench_demo.py  (about 10 minutes on 2 CPU cores)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from graftlens.results import load_run, summary


def run(args: list[str], cache: str, cwd: str) -> float:
    env = dict(os.environ, GRAFTLENS_CACHE=cache, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "graftlens", *args], env=env, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as work:
        cold = run(["demo"], cache, work)
        warm = run(["demo"], cache, work)
        warm_new_dir = run(["demo", "--out", "runs/demo-again"], cache, work)
        rows = load_run(Path(work, "runs", "demo")).rows
        again = load_run(Path(work, "runs", "demo-again")).rows
    table = summary(rows, ("config",), ("top1", "top5"), n_boot=1000, seed=0)
    top5 = {k[0]: round(v["top5"].value, 3) for k, v in table.items()}
    ci = {k[0]: [round(v["top5"].lo, 3), round(v["top5"].hi, 3)] for k, v in table.items()}
    print(
        json.dumps(
            {
                "benchmark": "graftlens_demo",
                "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
                "cold_s": round(cold, 1),
                "warm_s": round(warm, 1),
                "warm_new_run_dir_s": round(warm_new_dir, 1),
                "rows": len(rows),
                "same_results_in_both_run_dirs": [(r.config, r.example, r.target_prob) for r in rows]
                == [(r.config, r.example, r.target_prob) for r in again],
                "top5": {k: top5[k] for k in ("PRE", "SFT", "FE", "LT", "FE+LT", "(FE+LT)^C", "FE^C", "LT^C")},
                "top5_ci95": {k: ci[k] for k in ("SFT", "FE+LT", "(FE+LT)^C")},
                "fe_lt_over_sft": round(top5["FE+LT"] / top5["SFT"], 3),
                "components_top5": {k: v for k, v in top5.items() if "@" in k and v > 0},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
