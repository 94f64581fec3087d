"""Where the grafting overhead goes, on the embedded model: grafted/plain time per component
group, and the engine with each of its copy-saving techniques turned off in turn.

Same batch as bench_graft.py (32 prompts, FE+LT, every layer). Every variant and the plain
forward run once per round, in a shuffled order, for --repeats rounds; medians are reported. Prints one JSON
object. Usage: python benchmarks/bench_graft_ablation.py [--repeats 5]

Techniques: see TECHNIQUES in bench_graft.py.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
from bench_graft import TECHNIQUES, make_batch, without
from embedded_pair import embedded_pair

import graftlens
from graftlens.models import position_ids_for

COMPONENT_GROUPS = {"all": "all", "no_lm_head": "layer+embed+ln_final", "lm_head_only": "lm_head", "attn": "attn", "mlp": "mlp"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base, donor = embedded_pair()
    ids, mask, spans = make_batch(base.tokenizer, 32)
    pos = position_ids_for(mask)

    # Each technique off on its own, and off on top of computing padded positions (where the
    # engine does the plain forward's work, so what each technique saves is not hidden).
    variants: dict[str, tuple[str, tuple[str, ...]]] = {f"components={k}": (v, ()) for k, v in COMPONENT_GROUPS.items()}
    for t in TECHNIQUES:
        variants[f"all, {t}"] = ("all", (t,))
        if t != "no_padding_skip":
            variants[f"all, no_padding_skip+{t}"] = ("all", ("no_padding_skip", t))
    variants["plain"] = ("", ())

    def run(components: str, techniques: tuple[str, ...]) -> None:
        if not components:
            with torch.no_grad():
                base.model(input_ids=ids, attention_mask=mask, position_ids=pos)
            return
        with without(*techniques):
            rules = [graftlens.Graft("ft", components, "all", "FE+LT")]
            graftlens.grafted_forward(base, {"ft": donor}, rules, ids, mask, spans=spans)

    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    rng = random.Random(0)
    for round_ in range(args.repeats + 1):  # the first round warms up
        rng.shuffle(order)  # no variant always follows the same one
        for name in order:
            t0 = time.perf_counter()
            run(*variants[name])
            if round_:
                times[name].append(time.perf_counter() - t0)
    plain = statistics.median(times.pop("plain"))
    print(
        json.dumps(
            {
                "benchmark": "grafted_forward_ablation",
                "repeats": args.repeats,
                "plain_s": round(plain, 4),
                "grafted_over_plain": {k: round(statistics.median(v) / plain, 3) for k, v in times.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
