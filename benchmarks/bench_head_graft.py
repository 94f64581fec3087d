"""What grafting heads costs against grafting whole projections and against the plain model.

    python benchmarks/bench_head_graft.py [--rounds 7]

The embedded model and its noisy copy (``embedded_pair``); 32 rows of 16 tokens; layers 20-27,
three query heads each (all four parts) against the component graft ``q+k+v+o`` of the same
layers, both at positions 0, 7 and -1 of every row. A head graft is computed as a graft of the
whole projections from a spliced donor, so its forward should cost what the component graft
costs; building its Grafter also splices (copies) those projections. One thread; the rounds
interleave the three forwards; medians, in milliseconds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from embedded_pair import embedded_pair

from graftlens import Graft, HeadGraft
from graftlens.graft.engine import Grafter
from graftlens.models.run import run_logits

LAYERS = range(20, 28)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipient, donor = embedded_pair()
    ids = torch.randint(100, 40000, (32, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    heads = [(layer, h) for layer in LAYERS for h in (0, 4, 8)]
    rules = {
        "heads": [HeadGraft("ft", heads, "0,7,-1")],
        "components": [Graft("ft", "q+k+v+o", list(LAYERS), "0,7,-1")],
    }
    with torch.no_grad():
        build: dict[str, list[float]] = {name: [] for name in rules}
        grafters = {}
        for _ in range(3):
            for name, r in rules.items():
                t0 = time.perf_counter()
                grafters[name] = Grafter(recipient, {"ft": donor}, r)
                build[name].append(time.perf_counter() - t0)
        times: dict[str, list[float]] = {"plain": [], **{name: [] for name in rules}}
        for _ in range(args.rounds):
            for name in times:
                t0 = time.perf_counter()
                if name == "plain":
                    run_logits(recipient, ids, mask, last_only=True)
                else:
                    with grafters[name]:
                        run_logits(recipient, ids, mask, last_only=True)
                times[name].append(time.perf_counter() - t0)
    ms = {name: round(statistics.median(t) * 1e3, 1) for name, t in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "head_graft",
                "threads": 1,
                "rounds": args.rounds,
                "heads": len(heads),
                "forward_ms": ms,
                "heads_over_components": round(ms["heads"] / ms["components"], 3),
                "components_over_plain": round(ms["components"] / ms["plain"], 3),
                "build_ms": {name: round(statistics.median(t) * 1e3, 1) for name, t in build.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
