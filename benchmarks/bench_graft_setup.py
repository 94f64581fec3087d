"""What grafting costs before any product: building a Grafter (donor tensors, twins) and
planning one forward call (compiling the rules into owner maps, grouping positions).

    python benchmarks/bench_graft_setup.py

The embedded model, every component of every layer grafted at 3 positions of each of 32 rows of
16 tokens (bench_graft.py's full batch). One thread; medians of 30 calls, in milliseconds. A
sweep builds its Grafter once and plans every batch; ``grafted_forward`` does both per call.
Prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

import graftlens
from graftlens.graft.engine import Grafter


def median_ms(call, repeats: int = 30) -> float:
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 2)


def main() -> None:
    torch.set_num_threads(1)
    base, donor = graftlens.load_model("smollm2-135m"), graftlens.load_model("smollm2-135m")
    ids = torch.randint(100, 40000, (32, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    rules = [graftlens.Graft("ft", "all", "all", "0,7,-1")]
    with torch.no_grad():
        build = median_ms(lambda: Grafter(base, {"ft": donor}, rules))
        grafter = Grafter(base, {"ft": donor}, rules)
        plan = median_ms(lambda: grafter._prepare(base.model, (), {"input_ids": ids, "attention_mask": mask}))
    print(json.dumps({"benchmark": "graft_setup", "modules": len(grafter._modules), "build_ms": build, "plan_ms": plan}))


if __name__ == "__main__":
    main()
