"""Library sweeps against the same computations written in nnsight, side by side in one process.

What a library user calls (no recipe), on the embedded model and a perturbed copy of it as the
donor, on what the grafting and CMAP recipes score: 32 held-out prompts of the demo's new-fact
dataset, in one left-padded batch:

- grafting sweep: 8 configurations at the last token (components ``attn``, ``qkv``, ``o+mlp``,
  ``mlp`` × layers ``all``, ``half2``) through :func:`graftlens.graft_sweep`, against nnsight
  writing each grafted module's output at the last token from the donor's module (one traced
  forward per configuration);
- CMAP sweep: the donor's head outputs (``z``, the output projection's input) at the last token,
  written into the recipient for 8 layer groups (``all``, ``half1``, ``half2``, ``quarter1..4``,
  ``eighth8``) through :func:`graftlens.cmap_sweep`, against nnsight (one donor trace, then one
  patched trace per configuration);
- single calls: one grafting configuration through :func:`graftlens.grafted_forward` with
  ``last_only=True``, and one CMAP through :func:`graftlens.run_with_cache` +
  :func:`graftlens.cross_model_patched_logits` with ``last_only=True``, each against its nnsight twin.

Each round runs every implementation once, in turn (reversed every other round); medians of
``--rounds``; one thread (``torch.set_num_threads(1)``: this machine's second core is often busy).
The largest difference between graftlens' and nnsight's last-position logits is reported for each.
Needs nnsight (``pip install 'graftlens[bench]'``). Prints one JSON object.
Usage: python benchmarks/bench_library_sweeps.py [--rounds 5] [--prompts 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch
from embedded_pair import embedded_pair

import graftlens
from graftlens import Graft
from graftlens.data.defaults import demo_dataset
from graftlens.eval.batching import prompt_batch
from graftlens.models.names import expand_components, select_layers

GRAFT_CONFIGS = [(c, layers) for c in ("attn", "qkv", "o+mlp", "mlp") for layers in ("all", "half2")]
CMAP_GROUPS = ["all", "half1", "half2", "quarter1", "quarter2", "quarter3", "quarter4", "eighth8"]
# The Llama module of each canonical per-layer component (what nnsight addresses by attribute).
MODULE_OF = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def _attr(root, dotted: str):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def nnsight_graft(traced, donor, ids, mask, component: str, layers: list[int]) -> torch.Tensor:
    """One configuration as an nnsight user writes it: each grafted module's output at the last
    token computed by the donor's module from the same input."""
    names = [MODULE_OF[c] for c in expand_components(component)]
    with traced.trace(input_ids=ids, attention_mask=mask):
        for layer in layers:
            for name in names:  # in the order the forward calls them
                site = _attr(traced.model.layers[layer], name)
                theirs = _attr(donor.model.model.layers[layer], name)
                site.output[:, -1] = theirs(site.input[:, -1])
        logits = traced.lm_head.output[:, -1].save()
    return logits


def nnsight_cmap(traced, traced_donor, ids, mask, groups: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """CMAP as an nnsight user writes it: the donor's z (o_proj's input) of every layer saved in one
    trace, then one patched trace of the recipient per configuration."""
    n = len(traced_donor.model.layers)
    saved = []  # made outside the trace: nnsight runs the block in its own frame
    with traced_donor.trace(input_ids=ids, attention_mask=mask):
        for layer in range(n):
            saved.append(traced_donor.model.layers[layer].self_attn.o_proj.input[:, -1].save())
    out = {}
    for name, layers in groups.items():
        with traced.trace(input_ids=ids, attention_mask=mask):
            for layer in layers:
                traced.model.layers[layer].self_attn.o_proj.input[:, -1] = saved[layer]
            out[name] = traced.lm_head.output[:, -1].save()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from nnsight import NNsight

    base, donor = embedded_pair()
    batch = prompt_batch(demo_dataset()[0].test[: args.prompts], base.tokenizer)
    ids, mask = batch.input_ids, batch.attention_mask
    n = base.adapter.n_layers
    traced, traced_donor = NNsight(base.model), NNsight(donor.model)

    graft_configs = {f"{c} @ {layers}": [Graft("ft", c, layers, "LT")] for c, layers in GRAFT_CONFIGS}
    cmap_groups = {g: select_layers(g, n) for g in CMAP_GROUPS}
    cmap_configs = {g: {f"z.{layer}": None for layer in layers} for g, layers in cmap_groups.items()}
    one_graft = "o+mlp @ half2"
    one_cmap = "half2"

    def graft_nnsight():
        return {
            f"{c} @ {layers}": nnsight_graft(traced, donor, ids, mask, c, select_layers(layers, n)) for c, layers in GRAFT_CONFIGS
        }

    def cmap_single_graftlens():
        points = list(cmap_configs[one_cmap])
        _, cache = graftlens.run_with_cache(donor, ids, mask, points, last_only=True)
        logits = graftlens.cross_model_patched_logits(base, cache, ids, mask, cmap_configs[one_cmap], "LT", last_only=True)
        return {one_cmap: logits[:, -1]}

    sweeps = {
        "grafting sweep, 8 configurations at LT": {
            "graftlens": lambda: graftlens.graft_sweep(base, {"ft": donor}, graft_configs, ids, mask, spans=batch.spans),
            "nnsight": graft_nnsight,
        },
        "CMAP sweep, z of 8 layer groups at LT": {
            "graftlens": lambda: graftlens.cmap_sweep(base, donor, cmap_configs, ids, mask, positions="LT"),
            "nnsight": lambda: nnsight_cmap(traced, traced_donor, ids, mask, cmap_groups),
        },
        f"single grafting call ({one_graft} at LT)": {
            "graftlens": lambda: {
                one_graft: graftlens.grafted_forward(base, {"ft": donor}, graft_configs[one_graft], ids, mask, last_only=True)[
                    :, -1
                ]
            },
            "nnsight": lambda: {one_graft: nnsight_graft(traced, donor, ids, mask, "o+mlp", select_layers("half2", n))},
        },
        f"single CMAP call (z of {one_cmap} at LT)": {
            "graftlens": cmap_single_graftlens,
            "nnsight": lambda: nnsight_cmap(traced, traced_donor, ids, mask, {one_cmap: cmap_groups[one_cmap]}),
        },
    }
    seconds = {s: defaultdict(list) for s in sweeps}
    results = {s: {} for s in sweeps}
    with torch.no_grad():
        for r in range(args.rounds):
            for sweep, impls in sweeps.items():
                order = list(impls) if r % 2 == 0 else list(reversed(impls))
                for name in order:
                    t0 = time.perf_counter()
                    results[sweep][name] = impls[name]()
                    seconds[sweep][name].append(time.perf_counter() - t0)
    out = {
        "prompts": ids.shape[0],
        "columns": ids.shape[1],
        "real tokens": int(mask.sum()),
        "rounds": args.rounds,
        "threads": 1,
        "nnsight": __import__("nnsight").__version__,
        "torch": torch.__version__,
        "sweeps": {},
    }
    for sweep in sweeps:
        med = {name: statistics.median(ts) for name, ts in seconds[sweep].items()}
        ours, theirs = results[sweep]["graftlens"], results[sweep]["nnsight"]
        out["sweeps"][sweep] = {
            "seconds (median)": {k: round(v, 3) for k, v in med.items()},
            "graftlens / nnsight": round(med["graftlens"] / med["nnsight"], 3),
            "per-round ratios": [round(a / b, 3) for a, b in zip(seconds[sweep]["graftlens"], seconds[sweep]["nnsight"])],
            "max |Δlogit|": float(max((ours[k] - theirs[k]).abs().max() for k in ours)),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
