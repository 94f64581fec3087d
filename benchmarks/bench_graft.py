"""Speed of the grafting engine on the embedded model.

32 prompts of ~16 tokens in one batch: a plain forward, a grafted forward (FE+LT, every
component, every layer) and the literal token-by-token reference over the same prompts. The
engine leaves padded positions uncomputed and the plain forward does not, so the grafted
forward is also timed with padded positions computed. Plain and grafted runs are interleaved
and repeated; medians are reported. Prints one JSON object.
Usage: python benchmarks/bench_graft.py [--repeats 7] [--reference-prompts 32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator

import torch

import graftlens
from graftlens.graft import engine, grafted, position_ids_for
from graftlens.graft.reference import reference_forward

TECHNIQUES = {
    "no_padding_skip": "padded positions computed like real ones (as the plain forward does)",
    "no_mlp_block": "gate/up/down grafted module by module, each gathering and scattering its rows",
    "no_remembered": "q/k/v and the MLP gather the norm's output again instead of reusing its grouped rows",
    "no_wide_chunks": "the unembedding gathered and scattered whole like any other module",
}


@contextlib.contextmanager
def without(*techniques: str) -> Iterator[None]:
    """The engine with some of its techniques (TECHNIQUES) turned off."""
    saved = engine.BatchState, engine._mlp_blocks, engine.STREAM_COMPONENTS, grafted.WIDE_OUTPUT
    for technique in techniques:
        if technique == "no_padding_skip":
            engine.BatchState = lambda shape, padding=None: grafted.BatchState(shape)
        elif technique == "no_mlp_block":
            engine._mlp_blocks = lambda *args: []
        elif technique == "no_remembered":
            engine.STREAM_COMPONENTS = ()
        elif technique == "no_wide_chunks":
            grafted.WIDE_OUTPUT = 10**9
        else:
            raise ValueError(f"unknown technique {technique!r}; known: {', '.join(TECHNIQUES)}")
    try:
        yield
    finally:
        engine.BatchState, engine._mlp_blocks, engine.STREAM_COMPONENTS, grafted.WIDE_OUTPUT = saved

FIRST = ["Maren", "Tobias", "Ilse", "Corwin", "Dagny", "Ferris", "Odile", "Lucan"]
LAST = ["Holloway", "Quist", "Brandt", "Okafor", "Vance", "Sorensen", "Achterberg", "Pell"]
TEMPLATES = [
    "Q: Who stars in a movie with {} ? A: An actor named",
    "{} stars in a movie alongside the actor",
    "In the new film, {} appears on screen next to",
    "The movie that {} starred in also featured",
]


def make_batch(tokenizer, n: int):
    prompts, char_spans = [], []
    for i in range(n):
        name = f"{FIRST[i % 8]} {LAST[(i * 3 + i // 8) % 8]}"
        text = TEMPLATES[i % len(TEMPLATES)].format(name).replace(" ?", "?")
        start = text.index(name)
        prompts.append(text)
        char_spans.append((start, start + len(name)))
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, return_offsets_mapping=True)
    spans = []
    for b, (cs, ce) in enumerate(char_spans):
        real = enc.attention_mask[b].bool()
        offsets = enc.offset_mapping[b][real].tolist()
        toks = [j for j, (s, e) in enumerate(offsets) if e > cs and s < ce]
        spans.append({"FE": (toks[0], toks[-1] + 1)})
    return enc.input_ids, enc.attention_mask, spans


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference-prompts", type=int, default=32)
    args = parser.parse_args()

    base = graftlens.load_model("smollm2-135m")
    donor = graftlens.load_model("smollm2-135m")
    with torch.no_grad():  # a donor that differs from the base, as a finetuned model would
        g = torch.Generator().manual_seed(0)
        for p in donor.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-3)
    ids, mask, spans = make_batch(base.tokenizer, 32)
    rules = [graftlens.Graft("ft", "all", "all", "FE+LT")]
    pos = position_ids_for(mask)

    def plain() -> None:
        with torch.no_grad():
            base.model(input_ids=ids, attention_mask=mask, position_ids=pos)

    def grafted_forward() -> None:
        graftlens.grafted_forward(base, {"ft": donor}, rules, ids, mask, spans=spans)

    def grafted_padding_computed() -> None:
        with without("no_padding_skip"):
            grafted_forward()

    runs = {"plain": plain, "grafted": grafted_forward, "grafted_padding_computed": grafted_padding_computed}
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    n_ref = args.reference_prompts
    t0 = time.perf_counter()
    ref = reference_forward(base, {"ft": donor}, ids[:n_ref], mask[:n_ref], rules, spans=spans[:n_ref])
    t_ref = time.perf_counter() - t0
    eng = graftlens.grafted_forward(base, {"ft": donor}, rules, ids, mask, spans=spans)[:n_ref]
    real = mask[:n_ref].bool()
    max_diff = float((eng[real] - ref[real]).abs().max())
    grafted_positions = sum(e - s + 1 for s, e in (sp["FE"] for sp in spans))

    plain_s, graft_s, padded_s = (statistics.median(times[k]) for k in runs)
    ref_s = t_ref * 32 / n_ref
    print(json.dumps({
        "benchmark": "grafted_forward_embedded",
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "batch": list(ids.shape),
        "grafted_positions": grafted_positions,
        "real_positions": int(mask.sum()),
        "repeats": args.repeats,
        "plain_s": round(plain_s, 4),
        "grafted_s": round(graft_s, 4),
        "grafted_over_plain": round(graft_s / plain_s, 3),
        "grafted_padding_computed_s": round(padded_s, 4),
        "grafted_padding_computed_over_plain": round(padded_s / plain_s, 3),
        "reference_s": round(ref_s, 2),
        "reference_prompts_timed": n_ref,
        "engine_speedup_over_reference": round(ref_s / graft_s, 1),
        "engine_vs_reference_max_abs_logit_diff": max_diff,
    }))


if __name__ == "__main__":
    main()
