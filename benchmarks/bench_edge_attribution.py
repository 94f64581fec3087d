"""Edge attribution patching against exact edge patching, on the embedded model.

24 entity-tracking pairs of 5 boxes (clean prompts and their corrupted sources, as et-circuit
uses). Measures:

- ``eap_s``: seconds for EAP over every edge (head → q/k/v of every later head, head → logits);
- ``exact_s_per_edge``: seconds per exact edge patch (one patched run; the clean and corrupted
  runs are made once, :class:`~graftlens.interventions.edges.ExactEdges`);
- the rank correlation (Spearman) of EAP scores and exact edge-patching effects (the whole edge
  patched, ``scale = 1``) over the ``--top`` edges with the largest |EAP score| and over
  ``--random`` edges drawn uniformly among all, and the share of equal signs.

``torch.set_num_threads(1)`` (this machine's second core is often busy). Prints one JSON object.
Usage: python benchmarks/bench_edge_attribution.py [--top 60 --random 60]  (about 5 minutes on one core)
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from graftlens.data.entity_tracking import make_pairs, tokenize_entity_tracking
from graftlens.eval.batching import collate, pad_id_of
from graftlens.interventions.edges import ExactEdges, edge_attribution, rank_correlation
from graftlens.interventions.paths import PathInputs
from graftlens.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--random", type=int, default=60)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    tok = model.tokenizer
    pad = pad_id_of(tok)
    prompts = tokenize_entity_tracking(make_pairs(tok, "corrupted", 24, 5, 0, "test"), tok)
    base, source = collate(prompts, pad), collate([p.meta["source"] for p in prompts], pad)
    inputs = PathInputs(base.input_ids, source.input_ids, base.attention_mask, source.attention_mask)

    start = time.perf_counter()
    eap = edge_attribution(model, inputs, base.target_ids)
    eap_s = time.perf_counter() - start

    valid = eap.valid.nonzero().tolist()
    magnitude = eap.scores.abs()
    top = sorted(valid, key=lambda ij: -float(magnitude[ij[0], ij[1]]))[: args.top]
    drawn = random.Random(0).sample(valid, args.random)
    results = {}
    start = time.perf_counter()
    exact_runs = ExactEdges(model, inputs)  # the clean and corrupted runs, once
    for name, edges in (("top", top), ("random", drawn)):
        estimate, exact = [], []
        for i, j in edges:
            estimate.append(float(eap.scores[i, j]))
            exact.append(exact_runs.effect(base.target_ids, eap.senders[i], eap.receivers[j]))
        same_sign = sum((a > 0) == (b > 0) for a, b in zip(estimate, exact, strict=True)) / len(edges)
        spearman = round(rank_correlation(estimate, exact), 3)
        results[name] = {"edges": len(edges), "spearman": spearman, "same_sign": round(same_sign, 3)}
    exact_s = (time.perf_counter() - start) / (len(top) + len(drawn))
    print(
        json.dumps(
            {
                "model": args.model,
                "prompts": len(prompts),
                "edges": len(valid),
                "eap_s": round(eap_s, 1),
                "exact_s_per_edge": round(exact_s, 2),
                "exact_s_all_edges_estimated": round(exact_s * len(valid)),
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
