"""Speed of the grafting engine on the embedded model.

32 prompts of ~16 tokens in one batch: a plain forward, a grafted forward (FE+LT, every
component, every layer) and the literal token-by-token reference over the same prompts. The
engine leaves padded positions uncomputed and the plain forward does not, so the grafted
forward is also timed with padded positions computed. A second batch has no padding at all
(32 rows × 16 real tokens, every component of every layer grafted at 3 positions of each row):
the engine's overhead when nothing can be skipped. Beside it runs the *floor*: the plain
forward with every linear module's rows split as the grafted forward splits them (the rows
the rule grafts computed with the donor's weights, the others with the base's), each part
written straight into one output, nothing gathered or copied back. No exact grafting can do
fewer products or read fewer weights, so grafted/floor is the engine's own overhead. Plain and
grafted runs are interleaved and repeated; medians are reported. Prints one JSON object.
Usage: python benchmarks/bench_graft.py [--repeats 7] [--reference-prompts 32] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from embedded_pair import embedded_pair

import graftlens
from graftlens.graft import engine, grafted
from graftlens.graft.reference import reference_forward
from graftlens.models import position_ids_for

TECHNIQUES = {
    "no_padding_skip": "padded positions computed like real ones (as the plain forward does)",
    "no_mlp_block": "gate/up/down grafted module by module, each gathering and scattering its rows",
    "no_patch": "norms and embeddings gathered and scattered like projections, not computed whole and patched",
    "no_wide_chunks": "the unembedding gathered and scattered whole like any other module",
}


@contextlib.contextmanager
def without(*techniques: str) -> Iterator[None]:
    """The engine with some of its techniques (TECHNIQUES) turned off."""
    saved = engine.BatchState, engine._mlp_blocks, engine.PATCHED_COMPONENTS, grafted.WIDE_OUTPUT
    for technique in techniques:
        if technique == "no_padding_skip":
            engine.BatchState = lambda shape, padding=None: grafted.BatchState(shape)
        elif technique == "no_mlp_block":
            engine._mlp_blocks = lambda *args: []
        elif technique == "no_patch":
            engine.PATCHED_COMPONENTS = ()
        elif technique == "no_wide_chunks":
            grafted.WIDE_OUTPUT = 10**9
        else:
            raise ValueError(f"unknown technique {technique!r}; known: {', '.join(TECHNIQUES)}")
    try:
        yield
    finally:
        engine.BatchState, engine._mlp_blocks, engine.PATCHED_COMPONENTS, grafted.WIDE_OUTPUT = saved


@contextlib.contextmanager
def split_products(base: torch.nn.Module, donor: torch.nn.Module, donor_rows: int) -> Iterator[None]:
    """Every ``nn.Linear`` of ``base`` computes its first rows with its own weights and its last
    ``donor_rows`` rows with ``donor``'s, each part written into its rows of one output: the
    matrix products of a grafted forward without any gather or copy (the values are not meant
    to mean anything)."""
    donor_modules = dict(donor.named_modules())

    def split_forward(module: torch.nn.Linear, donor_weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            rows = x.reshape(-1, x.shape[-1])  # [batch*pos, in]
            keep = rows.shape[0] - donor_rows
            out = rows.new_empty(rows.shape[0], module.out_features)  # [batch*pos, out]
            torch.mm(rows[:keep], module.weight.t(), out=out[:keep])
            torch.mm(rows[keep:], donor_weight.t(), out=out[keep:])
            return out.view(*x.shape[:-1], module.out_features)

        return forward

    linears = [(name, m) for name, m in base.named_modules() if type(m) is torch.nn.Linear and m.bias is None]
    for name, module in linears:
        module.forward = split_forward(module, donor_modules[name].weight)
    try:
        yield
    finally:
        for _, module in linears:
            del module.forward


FIRST = ["Maren", "Tobias", "Ilse", "Corwin", "Dagny", "Ferris", "Odile", "Lucan"]
LAST = ["Holloway", "Quist", "Brandt", "Okafor", "Vance", "Sorensen", "Achterberg", "Pell"]
TEMPLATES = [
    "Q: Who stars in a movie with {} ? A: An actor named",
    "{} stars in a movie alongside the actor",
    "In the new film, {} appears on screen next to",
    "The movie that {} starred in also featured",
]


def interleaved_times(runs: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds of each run, once per round after a warm-up, the order reversed every other round
    (drift cancels out); ``sync`` waits for the device (a no-op on a CPU)."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats):
        for name in list(runs)[:: 1 if i % 2 == 0 else -1]:
            sync()
            t0 = time.perf_counter()
            runs[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


FULL_POSITIONS = "0,7,-1"  # the full batch's grafted positions in every row


def full_batch(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, ``[32, 16]`` each, no padding: token ids drawn at random
    (the arithmetic does not depend on them)."""
    ids = torch.randint(100, 40000, (32, 16), generator=torch.Generator().manual_seed(1)).to(device)
    return ids, torch.ones_like(ids)


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
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: ratios not skewed by a busy core)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    base, donor = embedded_pair(args.device)
    ids, mask, spans = make_batch(base.tokenizer, 32)
    ids, mask = ids.to(args.device), mask.to(args.device)
    rules = [graftlens.Graft("ft", "all", "all", "FE+LT")]
    pos = position_ids_for(mask)
    full_ids, full_mask = full_batch(args.device)
    full_pos = position_ids_for(full_mask)
    full_rules = [graftlens.Graft("ft", "all", "all", FULL_POSITIONS)]

    def plain() -> None:
        with torch.no_grad():
            base.model(input_ids=ids, attention_mask=mask, position_ids=pos)

    def grafted_forward() -> None:
        graftlens.grafted_forward(base, {"ft": donor}, rules, ids, mask, spans=spans)

    def grafted_padding_computed() -> None:
        with without("no_padding_skip"):
            grafted_forward()

    def plain_full() -> None:
        with torch.no_grad():
            base.model(input_ids=full_ids, attention_mask=full_mask, position_ids=full_pos)

    def grafted_full() -> None:
        graftlens.grafted_forward(base, {"ft": donor}, full_rules, full_ids, full_mask)

    def floor_full() -> None:
        with split_products(base.model, donor.model, 3 * full_ids.shape[0]):
            plain_full()

    # The two batches timed apart: the padded batch's runs, then the full batch's pair.
    times = interleaved_times(
        {"plain": plain, "grafted": grafted_forward, "grafted_padding_computed": grafted_padding_computed}, args.repeats, sync
    )
    times.update(
        interleaved_times({"plain_full": plain_full, "grafted_full": grafted_full, "floor_full": floor_full}, args.repeats, sync)
    )

    n_ref = args.reference_prompts
    t0 = time.perf_counter()
    ref = reference_forward(base, {"ft": donor}, ids[:n_ref], mask[:n_ref], rules, spans=spans[:n_ref])
    t_ref = time.perf_counter() - t0
    eng = graftlens.grafted_forward(base, {"ft": donor}, rules, ids, mask, spans=spans)[:n_ref].cpu()
    real = mask[:n_ref].bool().cpu()
    max_diff = float((eng[real] - ref[real]).abs().max())
    grafted_positions = sum(e - s + 1 for s, e in (sp["FE"] for sp in spans))

    machine = f"{platform.machine()}, {os.cpu_count()} cpu, torch {torch.__version__}, {torch.get_num_threads()} threads"
    plain_s, graft_s, padded_s, plain_full_s, graft_full_s, floor_full_s = (statistics.median(times[k]) for k in times)

    def per_round(a: str, b: str) -> list[float]:
        return sorted(x / y for x, y in zip(times[a], times[b]))

    full_pairs = per_round("grafted_full", "plain_full")
    ref_s = t_ref * 32 / n_ref
    print(
        json.dumps(
            {
                "benchmark": "grafted_forward_embedded",
                "machine": machine,
                "device": args.device,
                "batch": list(ids.shape),
                "grafted_positions": grafted_positions,
                "real_positions": int(mask.sum()),
                "repeats": args.repeats,
                "plain_s": round(plain_s, 4),
                "grafted_s": round(graft_s, 4),
                "grafted_over_plain": round(graft_s / plain_s, 3),
                "grafted_padding_computed_s": round(padded_s, 4),
                "grafted_padding_computed_over_plain": round(padded_s / plain_s, 3),
                "full_batch": list(full_ids.shape),
                "full_grafted_positions": 3 * full_ids.shape[0],
                "plain_full_s": round(plain_full_s, 4),
                "grafted_full_s": round(graft_full_s, 4),
                "grafted_full_over_plain": round(graft_full_s / plain_full_s, 3),
                "grafted_full_over_plain_median_of_rounds": round(statistics.median(full_pairs), 3),
                "grafted_full_over_plain_per_round": [round(r, 3) for r in full_pairs],
                "floor_full_s": round(floor_full_s, 4),
                "floor_full_over_plain_median_of_rounds": round(statistics.median(per_round("floor_full", "plain_full")), 3),
                "grafted_full_over_floor_median_of_rounds": round(statistics.median(per_round("grafted_full", "floor_full")), 3),
                "reference_s": round(ref_s, 2),
                "reference_prompts_timed": n_ref,
                "engine_speedup_over_reference": round(ref_s / graft_s, 1),
                "engine_vs_reference_max_abs_logit_diff": max_diff,
            }
        )
    )


if __name__ == "__main__":
    main()
