"""Edge circuits against node circuits of the same heads, on the embedded model.

24 entity-tracking prompts of 5 boxes (et-circuit's clean prompts; EAP over them and their
corrupted sources), head means over 100 reference prompts whose query label names no box. For
each size ``k`` (heads): the node circuit of EAP's first ``k`` heads (every other head
mean-ablated, :func:`~graftlens.mean_ablated_logits`) and the edge circuit of the edges that
brought them (every other edge mean-ablated, :func:`~graftlens.edge_ablated_logits`). Measures,
per size: edges kept, heads in the edge circuit, seconds for each run over the 24 prompts, and
each one's top-1 accuracy over the full model's.

``torch.set_num_threads(1)`` (this machine's second core is often busy). Prints one JSON object.
Usage: python benchmarks/bench_edge_circuits.py [--sizes 45 90 270]  (about 3 minutes on one core)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from graftlens.data.entity_tracking import make_pairs, mean_reference, tokenize_entity_tracking
from graftlens.eval.batching import collate, pad_id_of
from graftlens.interventions.circuits import accuracy, head_means, mean_ablated_logits
from graftlens.interventions.edge_circuits import edge_ablated_logits, edges_for_heads
from graftlens.interventions.edges import edge_attribution
from graftlens.interventions.faithfulness import top_circuit
from graftlens.interventions.paths import PathInputs
from graftlens.models import load_model
from graftlens.models.run import run_logits


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[45, 90, 270])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    a = model.adapter
    tok = model.tokenizer
    pad = pad_id_of(tok)
    prompts = tokenize_entity_tracking(make_pairs(tok, "corrupted", args.prompts, 5, 0, "test"), tok)
    base, source = collate(prompts, pad), collate([p.meta["source"] for p in prompts], pad)
    inputs = PathInputs(base.input_ids, source.input_ids, base.attention_mask, source.attention_mask)
    reference = collate(tokenize_entity_tracking(mean_reference(tok, 100, 5, 0, "test"), tok), pad)
    means = head_means(model, [(reference.input_ids, reference.attention_mask)])
    eap = edge_attribution(model, inputs, base.target_ids)
    with torch.no_grad():
        plain, plain_s = _timed(lambda: run_logits(model, base.input_ids, base.attention_mask, last_only=True)[:, -1])
    full = accuracy(plain, base.target_ids)
    rows = []
    for k in args.sizes:
        edges = edges_for_heads(eap, k)
        nodes = top_circuit(eap.heads_by_edges(), k)
        node_logits, node_s = _timed(lambda n=nodes: mean_ablated_logits(model, base.input_ids, base.attention_mask, n, means))
        edge_logits, edge_s = _timed(lambda e=edges: edge_ablated_logits(model, base.input_ids, base.attention_mask, e, means))
        rows.append(
            {
                "heads": k,
                "edges": len(edges.edges),
                "edge_circuit_heads": len(edges.heads(a.n_layers, a.n_heads, a.n_kv_heads)),
                "node_s": round(node_s, 2),
                "edge_s": round(edge_s, 2),
                "edge_over_node_time": round(edge_s / node_s, 1),
                "node_faithfulness": round(accuracy(node_logits, base.target_ids) / full, 3) if full else None,
                "edge_faithfulness": round(accuracy(edge_logits, base.target_ids) / full, 3) if full else None,
            }
        )
    print(
        json.dumps(
            {
                "model": args.model,
                "prompts": len(prompts),
                "valid_edges": int(eap.valid.sum()),
                "plain_s": round(plain_s, 2),
                "full_accuracy": round(full, 3),
                "sizes": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
