"""A recipe run by one process and by Ray workers on a local Ray instance: seconds, and whether
the stored rows are the same, bit for bit.

    python benchmarks/bench_ray.py                          # the demo recipe, 2 workers × 1 thread
    python benchmarks/bench_ray.py --threads 2 --workers 1  # one worker with the process's 2 threads
    python benchmarks/bench_ray.py --recipe position-grafting-large --workers 8 --threads 4

Each run starts from a new run directory (finetuned models come from the cache, so run the
recipe once first). The one-process run and the Ray run use the same number of threads per
process (``--threads``), as the Ray run must for identical rows. The Ray run's seconds include
starting Ray and each worker loading its models. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import torch

from graftlens.experiments import load_recipe, run_recipe


def rows(run_dir: Path) -> list[tuple]:
    con = sqlite3.connect(run_dir / "results.sqlite")
    out = con.execute(
        "SELECT config, example, target_prob, target_rank, top_tokens, target_logprob, continuation "
        "FROM results ORDER BY config, example"
    ).fetchall()
    con.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process (the driver's, the workers')")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe, path = load_recipe(args.recipe)
    with tempfile.TemporaryDirectory() as tmp:
        timed = {}
        for label, options in (("one_process", {}), ("ray", {"ray": "local", "workers": args.workers})):
            t0 = time.perf_counter()
            summary = run_recipe(recipe, Path(tmp) / label, recipe_path=path, **options)
            timed[label] = {"seconds": round(time.perf_counter() - t0, 1), "rows": summary.written}
        same = rows(Path(tmp) / "one_process") == rows(Path(tmp) / "ray")
    result = {
        "recipe": recipe.name,
        "threads_per_process": args.threads,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        **timed,
        "ray_over_one_process": round(timed["ray"]["seconds"] / timed["one_process"]["seconds"], 2),
        "rows_identical": same,
    }
    print(json.dumps(result))
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
