"""Shared prefixes: a component sweep at the last token, one full grafted forward per
configuration against one shared prefix and a grafted last-token continuation per configuration,
and against the configurations continuing the prefix as variants of one pass (8 per pass, what
recipes do: ``variant_rules``).

The embedded model, 32 prompts of ~16 tokens (bench_graft's batch), the 49 component × layer-group
configurations of the demo (attn, q, k, v, o, mlp, o+mlp × all, halves, quarters) grafted at LT
from a perturbed copy. Rounds are interleaved; medians per configuration are reported, and the
largest difference of the last-position probabilities between the two paths. One thread
(``torch.set_num_threads(1)``) unless ``--threads`` says otherwise. Prints one JSON object.
Usage: python benchmarks/bench_prefix.py [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from bench_graft import make_batch
from embedded_pair import embedded_pair

import graftlens
from graftlens.data.prompts import TokenizedPrompt
from graftlens.eval.batching import collate
from graftlens.graft.engine import Grafter
from graftlens.graft.prefix import PrefixCaches, variant_rules
from graftlens.methods.core.grafting import grafted_last_logits

COMPONENTS = ["attn", "q", "k", "v", "o", "mlp", "o+mlp"]
LAYERS = ["all", "half1", "half2", "quarter1", "quarter2", "quarter3", "quarter4"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base, donor = embedded_pair()
    ids, mask, spans = make_batch(base.tokenizer, 32)
    prompts = [
        TokenizedPrompt(f"p{i}", "", " x", tuple(ids[i][mask[i].bool()].tolist()), (0,), spans[i]) for i in range(len(ids))
    ]
    batch = collate(prompts, pad_id=int(ids[0, 0]))
    configs = [[graftlens.Graft("ft", c, layers, "LT")] for c in COMPONENTS for layers in LAYERS]
    full_fns = [grafted_last_logits(base, {"ft": donor}, rules) for rules in configs]

    per_pass = 8
    chunks = [configs[i : i + per_pass] for i in range(0, len(configs), per_pass)]
    grafters = [Grafter(base, {"ft": donor}, variant_rules(chunk)) for chunk in chunks]
    full_times, shared_times, prefix_times, variant_times, max_diff = [], [], [], [], 0.0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        full_out = [fn(batch).logits for fn in full_fns]
        full_times.append((time.perf_counter() - t0) / len(configs))
        prefixes = PrefixCaches()
        shared_fns = [grafted_last_logits(base, {"ft": donor}, rules, prefixes, "base") for rules in configs]
        t0 = time.perf_counter()
        prefixes.get(("base", tuple(p.id for p in batch.prompts)), base, batch.input_ids, batch.attention_mask)
        prefix_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        shared_out = [fn(batch).logits for fn in shared_fns]
        shared_times.append((time.perf_counter() - t0) / len(configs))
        cache = prefixes.get(("base", tuple(p.id for p in batch.prompts)), base, batch.input_ids, batch.attention_mask)
        t0 = time.perf_counter()
        variant_out = []
        with torch.no_grad():
            for chunk, grafter in zip(chunks, grafters):
                with grafter.on([s for s in batch.spans for _ in chunk]):
                    logits = cache.continued_variants(len(chunk))[0]
                variant_out += [logits[:, v] for v in range(len(chunk))]
        variant_times.append((time.perf_counter() - t0) / len(configs))
        for a, b, c in zip(full_out, shared_out, variant_out):
            max_diff = max(
                max_diff, float((a.softmax(-1) - b.softmax(-1)).abs().max()), float((a.softmax(-1) - c.softmax(-1)).abs().max())
            )

    full_s, shared_s, prefix_s, variant_s = (
        statistics.median(t) for t in (full_times, shared_times, prefix_times, variant_times)
    )
    n = len(configs)
    print(
        json.dumps(
            {
                "benchmark": "shared_prefix_component_sweep",
                "machine": f"{platform.machine()}, {os.cpu_count()} cpu, torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads",
                "batch": list(batch.input_ids.shape),
                "configurations": n,
                "rounds": args.rounds,
                "full_pass_s_per_config": round(full_s, 4),
                "continuation_s_per_config": round(shared_s, 4),
                "prefix_s_once": round(prefix_s, 4),
                "speedup_per_config": round(full_s / shared_s, 2),
                "speedup_sweep_including_prefix": round(full_s * n / (shared_s * n + prefix_s), 2),
                "variants_s_per_config": round(variant_s, 4),
                "variants_per_pass": per_pass,
                "speedup_variants_per_config": round(full_s / variant_s, 2),
                "speedup_variants_sweep_including_prefix": round(full_s * n / (variant_s * n + prefix_s), 2),
                "max_abs_prob_diff": max_diff,
            }
        )
    )


if __name__ == "__main__":
    main()
