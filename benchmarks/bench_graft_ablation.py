"""Where the grafting overhead goes: grafted/plain time per component group, on the embedded model.

Same batch as bench_graft.py (32 prompts, FE+LT). Prints one JSON object of ratios
(median over --repeats interleaved runs). Run it once as is and once with glibc's mmap threshold
raised to see the share of page faults from large fresh buffers:
  MALLOC_MMAP_THRESHOLD_=2000000000 MALLOC_TRIM_THRESHOLD_=4000000000 python benchmarks/bench_graft_ablation.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from bench_graft import make_batch

import graftlens
from graftlens.graft import position_ids_for

VARIANTS = {"all": "all", "no_lm_head": "layer+embed+ln_final", "lm_head_only": "lm_head", "attn": "attn", "mlp": "mlp"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base, donor = graftlens.load_model("smollm2-135m"), graftlens.load_model("smollm2-135m")
    ids, mask, spans = make_batch(base.tokenizer, 32)
    pos = position_ids_for(mask)
    times: dict[str, list[float]] = {k: [] for k in [*VARIANTS, "plain"]}
    for _ in range(args.repeats):
        for name, comps in VARIANTS.items():
            t0 = time.perf_counter()
            graftlens.grafted_forward(base, {"ft": donor}, ids, mask, [graftlens.Graft("ft", comps, "all", "FE+LT")], spans=spans)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            base.model(input_ids=ids, attention_mask=mask, position_ids=pos)
        times["plain"].append(time.perf_counter() - t0)
    plain = statistics.median(times["plain"])
    print(json.dumps({
        "benchmark": "grafted_forward_ablation",
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "default"),
        "plain_s": round(plain, 4),
        "grafted_over_plain": {k: round(statistics.median(v) / plain, 3) for k, v in times.items() if k != "plain"},
    }))


if __name__ == "__main__":
    main()
