"""graftlens' grafting sweeps against the paper's own algorithm, re-implemented from its
description: one prompt at a time (batch 1), token by token with a KV cache, a fresh deep copy of
the pretrained model before every token with the finetuned weights written into the components
grafted at that token.

Sweeps, the embedded model with a perturbed copy as the finetuned model (speed does not depend
on the weights), 32 prompts of ~16 tokens with their first-entity spans:

- Figure 2: every weight grafted at FE, LT, FE+LT, (FE+LT)^C, FE^C, LT^C;
- Figure 4: the 49 component × layer-group configurations at LT.

graftlens runs each sweep as a recipe does (the methods' readouts on one batch: shared prefixes,
configurations as variants of one pass); the paper's algorithm runs on a subsample of prompts and
configurations (``--prompts``, ``--configs`` per sweep). Both are stated as seconds per (prompt,
configuration), with the largest probability difference on the subsample. One thread
(``torch.set_num_threads(1)``) unless ``--threads`` says otherwise; ``--device cuda`` on a GPU.
Prints one JSON object.
Usage: python benchmarks/bench_paper_algorithm.py [--prompts 2] [--configs 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

import torch
from bench_graft import make_batch
from embedded_pair import embedded_pair
from transformers import DynamicCache

from graftlens.data.prompts import TokenizedPrompt
from graftlens.eval.batching import collate
from graftlens.eval.scoring import Readout
from graftlens.graft.reference import site_owners
from graftlens.methods.core.parts import GraftSpec, RunConfig
from graftlens.methods.core.registry import Execution, method_for
from graftlens.models.prefix import cache_argument

FIGURE2 = ["FE", "LT", "FE+LT", "(FE+LT)^C", "FE^C", "LT^C"]
COMPONENTS = ["attn", "q", "k", "v", "o", "mlp", "o+mlp"]
LAYERS = ["all", "half1", "half2", "quarter1", "quarter2", "quarter3", "quarter4"]


@torch.no_grad()
def paper_last_logits(base, donor, rules, ids: torch.Tensor, spans) -> torch.Tensor:
    """Logits ``[vocab]`` of one prompt's last token (``ids``: its real tokens), the paper's way."""
    n = len(ids)
    owners = site_owners(base, rules, n, spans)  # (module path, rows) → donor name or None, per token
    cache = DynamicCache(config=base.model.config)  # filled in place, token by token
    cache_arg = cache_argument(base)
    for t in range(n):
        model = copy.deepcopy(base.model)  # a fresh pretrained model before every token
        for (path, rows), who in owners.items():
            if who[t] is None:
                continue
            module, source = model.get_submodule(path), donor.model.get_submodule(path)
            for pname, p in module.named_parameters(recurse=False):
                donor_p = getattr(source, pname)
                if rows is None:
                    p.data.copy_(donor_p.data)
                else:
                    dim = 1 if type(module).__name__ == "Conv1D" and pname == "weight" else 0
                    for a, z in rows:
                        p.data.narrow(dim, a, z - a).copy_(donor_p.data.narrow(dim, a, z - a))
        out = model(
            input_ids=ids[None, t : t + 1],
            position_ids=torch.tensor([[t]], device=ids.device),
            use_cache=True,
            **{cache_arg: cache},
        )
    return out.logits[0, -1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--configs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, donor = embedded_pair(args.device)
    ids, mask, spans = make_batch(base.tokenizer, 32)
    prompts = [
        TokenizedPrompt(f"p{i}", "", " x", tuple(ids[i][mask[i].bool()].tolist()), (0,), spans[i]) for i in range(len(ids))
    ]
    batch = collate(prompts, pad_id=int(ids[0, 0])).to(base.device)
    sweeps = {
        "figure 2 (positions, every weight)": [GraftSpec(donor="ft", components="all", positions=p) for p in FIGURE2],
        "figure 4 (components × layer groups at LT)": [
            GraftSpec(donor="ft", components=c, layers=layer, positions="LT") for c in COMPONENTS for layer in LAYERS
        ],
    }
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "device": str(base.device),
        "prompts": len(prompts),
        "sweeps": {},
    }
    for sweep, specs in sweeps.items():
        configs = [RunConfig(name=f"c{i}", panel=sweep, model="base", grafts=(spec,)) for i, spec in enumerate(specs)]
        execution = Execution({"base": base, "ft": donor}, configs=configs)
        readouts = [method_for(c.kind).readout(c, execution) for c in configs]
        t0 = time.perf_counter()
        with torch.no_grad():
            ours = [Readout.of(readout(batch)).logits for readout in readouts]  # [batch, vocab] each
        ours_s = (time.perf_counter() - t0) / (len(prompts) * len(configs))
        # The paper's algorithm on a subsample: the first prompts, configurations spread over the sweep.
        picked = sorted({round(k * (len(configs) - 1) / max(1, args.configs - 1)) for k in range(args.configs)})
        t0, max_diff, units = time.perf_counter(), 0.0, 0
        for k in picked:
            for b in range(args.prompts):
                real = batch.input_ids[b][batch.attention_mask[b].bool()]
                theirs = paper_last_logits(base, donor, configs[k].rules(), real, batch.spans[b])
                max_diff = max(max_diff, float((theirs.softmax(-1) - ours[k][b].softmax(-1)).abs().max()))
                units += 1
        paper_s = (time.perf_counter() - t0) / units
        out["sweeps"][sweep] = {
            "configurations": len(configs),
            "graftlens_s_per_prompt_config": round(ours_s, 5),
            "paper_algorithm_s_per_prompt_config": round(paper_s, 3),
            "paper_algorithm_units_timed": units,
            "speedup": round(paper_s / ours_s, 1),
            "max_abs_prob_diff": max_diff,
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
