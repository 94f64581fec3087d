"""Where a grafted forward's extra CPU time goes, op by op, on bench_graft.py's full batch.

Wall-clock ratios on a shared machine move by ±10% from round to round; the CPU time torch's
profiler gives each operator moves far less for the operators that only move memory. This
profiles plain and grafted forwards of the full batch (32 rows × 16 real tokens, every
component of every layer grafted at 3 positions of each row) and prints, per forward, the
self CPU milliseconds of the operators that gather, copy back or concatenate rows, and of the
matrix products. The unembedding's copies also pay the first touch of its 100 MB output
(the plain forward pays it inside its product), which varies from run to run, so a third run
grafts everything but the unembedding. Runs alternate --repeats times. Prints one JSON object.
Usage: python benchmarks/bench_graft_copies.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from bench_graft import FULL_POSITIONS, full_batch
from embedded_pair import embedded_pair
from torch.profiler import ProfilerActivity, profile

import graftlens
from graftlens.models import position_ids_for

ROW_COPIES = ("aten::index_select", "aten::index_copy_", "aten::cat")


def op_ms(fn, n: int = 2) -> dict[str, float]:
    """Self CPU milliseconds per call of ``fn``, by operator (``n`` calls profiled)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
    return {e.key: e.self_cpu_time_total / 1e3 / n for e in prof.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, donor = embedded_pair()
    ids, mask = full_batch()
    pos = position_ids_for(mask)
    rules = [graftlens.Graft("ft", "all", "all", FULL_POSITIONS)]
    rules_no_head = [graftlens.Graft("ft", "layer+embed+ln_final", "all", FULL_POSITIONS)]

    def plain() -> None:
        with torch.no_grad():
            base.model(input_ids=ids, attention_mask=mask, position_ids=pos)

    def grafted() -> None:
        graftlens.grafted_forward(base, {"ft": donor}, rules, ids, mask)

    def grafted_but_unembedding() -> None:
        graftlens.grafted_forward(base, {"ft": donor}, rules_no_head, ids, mask)

    variants = {"plain": plain, "grafted": grafted, "grafted_but_unembedding": grafted_but_unembedding}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            runs[name].append(op_ms(fn))

    def median_ms(name: str, ops: tuple[str, ...]) -> float:
        return round(statistics.median(sum(r.get(op, 0.0) for op in ops) for r in runs[name]), 1)

    print(
        json.dumps(
            {
                "benchmark": "grafted_forward_row_copies",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "repeats": args.repeats,
                "ms_per_forward": {
                    name: {
                        **{op.removeprefix("aten::"): median_ms(name, (op,)) for op in ROW_COPIES},
                        "row_copies": median_ms(name, ROW_COPIES),
                        "mm": median_ms(name, ("aten::mm",)),
                        "all_ops": round(statistics.median(sum(r.values()) for r in runs[name]), 1),
                    }
                    for name in runs
                },
            }
        )
    )


if __name__ == "__main__":
    main()
