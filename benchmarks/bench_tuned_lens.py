"""The tuned lens on the embedded model: what training it costs, phase by phase, and what reading
through it costs against the logit lens.

Training (:func:`~graftlens.train.tuned_lens.fit_tuned_lens`, the recipes' default settings:
64 sampled sequences of 64 tokens, one in 8 held out, 100 KL steps of 32 tokens): seconds to
sample the text, to take the streams and fit the least-squares start, for the KL steps, and to
score the held-out tokens; the held-out KL per depth under both lenses (mean over depths, and at
the first, middle and last depth). The lens is trained afresh, not read from the cache.

Reading (:func:`~graftlens.point_logits`): every layer's ``resid_post`` at the last token of
``--prompts`` of the model's own sampled sequences, projected through the final norm and the
unembedding, with and without the translators; medians of ``--rounds`` rounds.

``torch.set_num_threads(1)`` (this machine's second core is often busy). Prints one JSON object.
Usage: python benchmarks/bench_tuned_lens.py [--steps 100] [--prompts 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from graftlens.interventions.lens import point_logits
from graftlens.models import load_model
from graftlens.train.tuned_lens import TunedLensSettings, fit_tuned_lens, sample_tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=TunedLensSettings().steps)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    settings = TunedLensSettings(steps=args.steps)

    marks: list[tuple[int, float]] = []  # (progress step, time): sampled tokens first, then KL steps
    start = time.perf_counter()
    lens, manifest = fit_tuned_lens(model, settings, lambda step, total, loss: marks.append((step, time.perf_counter())))
    end = time.perf_counter()
    sampled = max(t for step, t in marks if step < settings.sample_length)  # the last sampled token
    kl_steps = [t for step, t in marks if step >= settings.sample_length]
    first_step = kl_steps[0] if kl_steps else end
    last_step = kl_steps[-1] if kl_steps else sampled
    # the first KL step's time includes the streams and the least-squares start: take one step's median off it
    per_step = statistics.median(b - a for a, b in zip(kl_steps, kl_steps[1:])) if len(kl_steps) > 1 else 0.0
    kl = manifest["held_out_kl"]
    n = len(kl["logit"])

    tokens = sample_tokens(model, TunedLensSettings(samples=args.prompts, sample_length=32, seed=1))
    points = [f"resid_post.{d}" for d in range(model.adapter.n_layers)]

    def read(with_lens) -> float:
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            with torch.no_grad():
                point_logits(model, tokens, None, points, "LT", lens=with_lens)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    logit_s, tuned_s = read(None), read(lens)
    print(
        json.dumps(
            {
                "model": args.model,
                "threads": 1,
                "settings": settings.model_dump(),
                "train": {
                    "total_s": round(end - start, 2),
                    "sample_s": round(sampled - start, 2),
                    "streams_and_least_squares_s": round(first_step - sampled - per_step, 2),
                    "kl_steps_s": round(last_step - first_step + per_step, 2),
                    "kl_step_median_s": round(per_step, 4),
                    "held_out_kl_s": round(end - last_step, 2),
                    "train_tokens": manifest["train_tokens"],
                    "held_out_tokens": manifest["held_out_tokens"],
                },
                "held_out_kl_nats": {
                    lens_name: {
                        "mean": round(sum(values) / n, 3),
                        "first": round(values[0], 3),
                        "middle": round(values[n // 2], 3),
                        "last": round(values[-1], 3),
                    }
                    for lens_name, values in kl.items()
                },
                "read": {
                    "prompts": args.prompts,
                    "points": len(points),
                    "logit_lens_s": round(logit_s, 3),
                    "tuned_lens_s": round(tuned_s, 3),
                    "tuned_over_logit": round(tuned_s / logit_s, 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
