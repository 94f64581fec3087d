"""Path patching per sender, the literal way against graftlens' exact shortcuts, on the embedded model.

For each of the four stages of et-circuit (senders and receivers at the last token, at the query
label, at the queried box), the seconds per sender of:

- ``full``: the sender run and the receiver run over every column (the definition);
- ``prefix``: both runs continue a KV cache of the columns before the first one touched;
- ``graftlens``: the sender run on one column per prompt, rows split by their first touched column,
  each part continuing its own prefix (what ``PreparedBatch`` does);

and the largest difference of the patched logits from ``full``. 24 entity-tracking pairs of 5
boxes, receivers two heads of a later layer, senders 5 heads of layer 10; medians of 3 rounds.
``torch.set_num_threads(1)`` (this machine's second core is often busy). Prints one JSON object.
Usage: python benchmarks/bench_path_patching.py  (about 3 minutes on one core)
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from graftlens.data.entity_tracking import make_pairs, tokenize_entity_tracking
from graftlens.eval.batching import collate, pad_id_of
from graftlens.interventions.paths import (
    PathInputs,
    PathRuns,
    PathStage,
    PreparedBatch,
    Receiver,
    first_touched_column,
    path_patched_run,
)
from graftlens.models import load_model
from graftlens.models.prefix import run_prefix

STAGES = {
    "value fetchers (LT → logits)": ("LT", "logits"),
    "position transmitters (LT → q)": ("LT", [Receiver("q", 22, 1), Receiver("q", 23, 7)]),
    "position detectors (query label → v)": ("query_box", [Receiver("v", 20, 0), Receiver("v", 21, 2)]),
    "structure readers (queried box → v)": ("correct_box", [Receiver("v", 15, 1), Receiver("v", 17, 0)]),
}


def main() -> None:
    torch.set_num_threads(1)
    model = load_model("smollm2-135m")
    tok = model.tokenizer
    pad = pad_id_of(tok)
    prompts = tokenize_entity_tracking(make_pairs(tok, "corrupted", 24, 5, 0, "test"), tok)
    base, source = collate(prompts, pad), collate([p.meta["source"] for p in prompts], pad)
    inputs = PathInputs(base.input_ids, source.input_ids, base.attention_mask, source.attention_mask, base.spans, source.spans)
    senders = [(10, h) for h in range(5)]
    out = {}
    with torch.no_grad():
        for stage, (position, receivers) in STAGES.items():
            kw = dict(sender_positions=position, receivers=receivers, receiver_positions=position)
            prepared = PreparedBatch(model, inputs, **kw)
            part = prepared.parts[0]
            cut = first_touched_column(inputs, position, receivers, position)
            prefix = run_prefix(model, inputs.clean_ids, inputs.masks[0], cut)
            whole = PreparedBatch(model, inputs, share_prefix=False, **kw).parts[0].runs
            path_stage = PathStage(position, None, receivers, position)

            def full(sender):
                runs = PathRuns(whole.clean_cache, whole.corrupted_cache, one_column=False)
                return path_patched_run(model, inputs, sender, path_stage, runs)

            def with_prefix(sender):
                runs = PathRuns(whole.clean_cache, whole.corrupted_cache, prefix=prefix, one_column=False)
                return path_patched_run(model, inputs, sender, path_stage, runs)

            def shortcuts(sender):
                return prepared.logits(sender)

            ways = {"full": full, "prefix": with_prefix, "graftlens": shortcuts}
            times: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(3):
                for name, fn in ways.items():
                    t0 = time.perf_counter()
                    for s in senders:
                        fn(s)
                    times[name].append((time.perf_counter() - t0) / len(senders))
            reference = [full(s) for s in senders]
            diff = {name: max(float((fn(s) - r).abs().max()) for s, r in zip(senders, reference)) for name, fn in ways.items()}
            med = {name: statistics.median(v) for name, v in times.items()}
            out[stage] = {
                "seconds_per_sender": {k: round(v, 4) for k, v in med.items()},
                "speedup_vs_full": {k: round(med["full"] / v, 2) for k, v in med.items()},
                "max_abs_logit_difference_vs_full": diff,
                "parts": len(prepared.parts),
                "first_part_rows": len(part.rows),
            }
    print(json.dumps({"model": "smollm2-135m", "pairs": 24, "boxes": 5, "threads": 1, "stages": out}, indent=1))


if __name__ == "__main__":
    main()
