"""Activation-level sweeps on the embedded model: graftlens' fast sweeps against the
straightforward loop (one full forward per intervention), and against nnsight's version of the
same loop when nnsight is installed (``pip install 'graftlens[bench]'``; never a graftlens dependency).

Sweeps (8 token-aligned known-fact pairs, "The capital of X is" with another country as the
corrupted prompt; targets the clean answers):

- ``resid_pre``: activation patching of the residual stream entering each layer, every layer × position;
- ``z``: activation patching of each head's output, every layer × head, at every position;
- ``z`` per (layer, position, head) (``by="position_head"``), layers 20-29: one head at one position at a time;
- ``resid_pre``, every column differing: the same with the corrupted prompts' first token replaced
  too, so that no patch is skipped and every one starts at column 0 or later (the worst case);
- ``knockout``: Geva et al.'s window sweep, last → subject blocked in the 9 layers around each layer.

Also the correlation of attribution patching (``approx=True``) with the exact scores.

Each round runs every implementation once, in turn; medians of ``--rounds`` rounds, and the
largest difference of each implementation's scores from the loop's. ``torch.set_num_threads(1)``
(this machine's second core is often busy). Prints one JSON object.
Usage: python benchmarks/bench_activation_sweeps.py [--rounds 3] [--only TEXT]  (about 10 minutes on one core;
``--only`` keeps the sweeps whose name holds TEXT)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch

from graftlens.data.known_facts import load_known_facts, tokenize_known_facts
from graftlens.eval.batching import collate, pad_id_of
from graftlens.interventions.continuation import CachedRun
from graftlens.interventions.knockout import attention_knockout
from graftlens.interventions.patching import activation_patching, activation_patching_loop
from graftlens.models import load_model
from graftlens.models.names import layer_window
from graftlens.models.run import run_logits

N_PAIRS = 8
WINDOW = 9


def pairs(model):
    """``N_PAIRS`` clean/corrupted prompt pairs of one relation and token length (the subject swapped)."""
    tok = model.tokenizer
    facts = [f for f in load_known_facts() if f.relation == "capital"]
    prompts = tokenize_known_facts(facts, tok)
    by_length = defaultdict(list)
    for p in prompts:
        by_length[len(p.input_ids)].append(p)
    group = max(by_length.values(), key=len)
    assert len(group) >= N_PAIRS + 1, "not enough capital facts of one length"
    clean = collate(group[:N_PAIRS], pad_id_of(tok))
    corrupted = collate(group[1 : N_PAIRS + 1], pad_id_of(tok))
    targets = torch.tensor([p.target_ids[0] for p in group[:N_PAIRS]])
    return clean, corrupted, targets


def nnsight_patching(model, clean_ids, corrupted_ids, targets, point: str):
    """The same sweep as a user writes it in nnsight: one traced forward per patch."""
    from nnsight import NNsight

    traced = NNsight(model.model)
    layers = traced.model.layers
    n_layers, n_heads, d_head = model.adapter.n_layers, model.adapter.n_heads, model.adapter.d_head
    saved = []  # made outside the trace: nnsight runs the block in its own frame
    with traced.trace(clean_ids):
        for layer in range(n_layers):
            site = layers[layer] if point == "resid_pre" else layers[layer].self_attn.o_proj
            saved.append(site.input.save())
    columns = clean_ids.shape[1] if point == "resid_pre" else n_heads
    scores = torch.empty(n_layers, columns)
    for layer in range(n_layers):
        for j in range(columns):
            logits = None
            with traced.trace(corrupted_ids):
                if point == "resid_pre":
                    layers[layer].input[:, j] = saved[layer][:, j]
                else:
                    sl = slice(j * d_head, (j + 1) * d_head)
                    layers[layer].self_attn.o_proj.input[:, :, sl] = saved[layer][:, :, sl]
                logits = traced.lm_head.output[:, -1].save()
            scores[layer, j] = float(logits.softmax(-1).gather(1, targets[:, None]).mean())
    return scores


def knockout_loop(model, batch):
    n = model.adapter.n_layers
    out = []
    for centre in range(n):
        with attention_knockout(model, layer_window(centre, WINDOW, n), sources="subject", targets="LT", spans=batch.spans):
            out.append(run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)[:, -1])
    return torch.stack(out)


def knockout_fast(model, batch):
    n = model.adapter.n_layers
    run = CachedRun(model, batch.input_ids, batch.attention_mask)
    return run.knocked_out_windows([layer_window(c, WINDOW, n) for c in range(n)], "subject", "LT", spans=batch.spans)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="run only the sweeps whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("smollm2-135m")
    clean, corrupted, targets = pairs(model)
    try:
        import nnsight  # noqa: F401

        have_nnsight = True
    except ImportError:
        have_nnsight = False

    other = corrupted.input_ids.clone()
    other[:, 0] = model.tokenizer(" Today").input_ids[0]  # every column now differs from the clean run

    def patching(point, by, corrupted_ids, with_nnsight=True, layers=None):
        ids = clean.input_ids
        impls = {
            "loop": lambda: activation_patching_loop(model, ids, corrupted_ids, targets, point, layers=layers, by=by).scores,
            "graftlens": lambda: activation_patching(model, ids, corrupted_ids, targets, point, layers=layers, by=by).scores,
        }
        if have_nnsight and with_nnsight:
            impls["nnsight"] = lambda: nnsight_patching(model, clean.input_ids, corrupted_ids, targets, point)
        return impls

    sweeps = {
        "resid_pre layer × position": patching("resid_pre", "position", corrupted.input_ids),
        "z layer × head": patching("z", "head", corrupted.input_ids),
        "resid_pre layer × position, every column differing": patching("resid_pre", "position", other, False),
        "z layer × position × head, layers 20-29": patching("z", "position_head", corrupted.input_ids, False, range(20, 30)),
        f"knockout last → subject, window {WINDOW}": {
            "loop": lambda: knockout_loop(model, clean).softmax(-1),
            "graftlens": lambda: knockout_fast(model, clean).softmax(-1),
        },
    }
    sweeps = {name: impls for name, impls in sweeps.items() if args.only in name}
    seconds = {s: defaultdict(list) for s in sweeps}
    results = {s: {} for s in sweeps}
    with torch.no_grad():
        for _ in range(args.rounds):
            for sweep, impls in sweeps.items():
                for name, fn in impls.items():
                    t0 = time.perf_counter()
                    results[sweep][name] = fn()
                    seconds[sweep][name].append(time.perf_counter() - t0)
    out = {"pairs": N_PAIRS, "columns": clean.input_ids.shape[1], "rounds": args.rounds, "threads": 1, "sweeps": {}}
    for sweep in sweeps:
        med = {name: statistics.median(ts) for name, ts in seconds[sweep].items()}
        ref = results[sweep]["loop"]
        out["sweeps"][sweep] = {
            "seconds": {k: round(v, 3) for k, v in med.items()},
            "speed-up over the loop": {k: round(med["loop"] / v, 2) for k, v in med.items() if k != "loop"},
            "max |diff| from the loop": {k: float((r - ref).abs().max()) for k, r in results[sweep].items() if k != "loop"},
        }
    out["attribution patching (approx) vs exact"] = {}
    for point, by in (("resid_pre", "position"), ("z", "head")):
        exact = activation_patching(model, clean.input_ids, corrupted.input_ids, targets, point, by=by)
        t0 = time.perf_counter()
        approx = activation_patching(model, clean.input_ids, corrupted.input_ids, targets, point, by=by, approx=True)
        seconds_approx = time.perf_counter() - t0
        x, y = (exact.scores - exact.corrupted).flatten(), (approx.scores - approx.corrupted).flatten()
        out["attribution patching (approx) vs exact"][point] = {
            "pearson": round(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), 3),
            "seconds": round(seconds_approx, 3),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
