"""Load time of the embedded model: cold (GGUF → safetensors conversion) and warm (from cache).

Prints one JSON object. Usage: python benchmarks/bench_load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = (
    "import time; t=time.perf_counter(); import graftlens; m=graftlens.load_model('smollm2-135m'); print(time.perf_counter()-t)"
)


def timed_load(cache: str) -> tuple[float, float]:
    """(wall seconds of a fresh interpreter loading the model, seconds inside load incl. imports)."""
    env = dict(os.environ, GRAFTLENS_CACHE=cache, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold_wall, cold_load = timed_load(cache)
        warm = [timed_load(cache) for _ in range(args.repeats)]
    print(
        json.dumps(
            {
                "benchmark": "load_embedded_model",
                "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
                "cold_process_s": round(cold_wall, 2),
                "cold_import_and_load_s": round(cold_load, 2),
                "warm_process_s_median": round(statistics.median(w for w, _ in warm), 2),
                "warm_import_and_load_s_median": round(statistics.median(inner for _, inner in warm), 2),
                "warm_repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
