"""Finetuning the embedded model on the demo facts, as `graftlens finetune` does it, timed.

Runs `graftlens finetune` in a fresh process with an empty cache (the embedded model is
converted first, outside the timed part), then runs it again to time the cached path. Prints
one JSON object with wall times and the manifest's evaluation (top-5 by direction, pretrained
and finetuned). Usage: python benchmarks/bench_finetune.py  (about 7 minutes on 2 CPU cores)
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


def run(args: list[str], cache: str) -> float:
    env = dict(os.environ, GRAFTLENS_CACHE=cache, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "graftlens", *args], env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        run(["info", "smollm2-135m"], cache)  # convert the GGUF once, untimed
        cold = run(["finetune"], cache)
        warm = run(["finetune"], cache)
        (manifest_path,) = Path(cache, "finetuned").glob("*/manifest.json")
        m = json.loads(manifest_path.read_text())
    ev = m["evaluation"]
    print(
        json.dumps(
            {
                "benchmark": "finetune_embedded_demo_facts",
                "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
                "finetune_process_s": round(cold, 1),
                "train_loop_s": m["train_seconds"],
                "cached_rerun_process_s": round(warm, 1),
                "steps": m["steps"],
                "train_texts": m["n_train_texts"],
                "hyperparameters": m["hyperparameters"],
                "top5_pretrained": {d: v["top5"] for d, v in ev["base"]["by_direction"].items()},
                "top5_finetuned": {d: v["top5"] for d, v in ev["finetuned"]["by_direction"].items()},
                "versions": m["versions"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
