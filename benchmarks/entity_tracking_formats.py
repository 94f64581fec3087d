"""Entity-tracking accuracy of the embedded model by prompt format and number of boxes: is there a
setting where it is clearly above chance (the prerequisite of finding a circuit in it)?

Each cell: 100 seeded prompts, top-1 accuracy over the whole vocabulary and accuracy among the
objects in the context (chance = 1 / boxes), and how often the pick among the objects is the last
one mentioned (a recency heuristic). Prints one JSON object.
Usage: python benchmarks/entity_tracking_formats.py  (about 3 minutes on 2 CPU cores)
"""

from __future__ import annotations

import json
import random
import sys

import torch

from graftlens.data.entity_tracking import vocabulary
from graftlens.eval.batching import pad_id_of
from graftlens.models import load_model
from graftlens.models.run import run_logits


def _context(objects, labels, sep=", ") -> str:
    return sep.join(("The" if j == 0 else "the") + f" {o} is in Box {b}" for j, (o, b) in enumerate(zip(objects, labels)))


FORMATS = {
    "graftlens (the X is in Box L, ...)": lambda o, b, q: _context(o, b) + f". Box {b[q]} contains the",
    "sentences": lambda o, b, q: " ".join(f"The {x} is in Box {y}." for x, y in zip(o, b)) + f" Box {b[q]} contains the",
    "Box L contains the X": lambda o, b, q: (
        ", ".join(f"Box {y} contains the {x}" for x, y in zip(o, b)) + f". Box {b[q]} contains the"
    ),
    "numbered boxes": lambda o, b, q: _context(o, [str(i) for i in range(len(o))]) + f". Box {q} contains the",
    "question / answer": lambda o, b, q: _context(o, b) + f".\nQuestion: What does Box {b[q]} contain?\nAnswer: the",
}


def measure(model, fmt, n_boxes: int, n: int = 100) -> dict:
    tok = model.tokenizer
    vocab = vocabulary(tok)
    rng = random.Random(f"{fmt}-{n_boxes}")
    prompts, targets, candidates = [], [], []
    for _ in range(n):
        objects, labels = rng.sample(vocab.objects, n_boxes), rng.sample(vocab.labels, n_boxes)
        q = rng.randrange(n_boxes)
        prompts.append(FORMATS[fmt](objects, labels, q))
        ids = [tok(" " + o, add_special_tokens=False)["input_ids"][0] for o in objects]
        targets.append(ids[q])
        candidates.append(ids)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token_id = pad_id_of(tok)
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = run_logits(model, enc["input_ids"], enc["attention_mask"], last_only=True)[:, -1]
    top1 = among = last = 0
    for i in range(n):
        top1 += int(logits[i].argmax()) == targets[i]
        c = candidates[i]
        pick = c[int(logits[i, c].argmax())]
        among += pick == targets[i]
        last += pick == c[-1]
    return {"top1": top1 / n, "among_objects": among / n, "picks_last": last / n, "chance": round(1 / n_boxes, 3)}


def main() -> None:
    torch.set_num_threads(2)
    model = load_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")
    out = {fmt: {n: measure(model, fmt, n) for n in (2, 3, 5, 7)} for fmt in FORMATS}
    print(json.dumps({"model": model.spec, "prompts_per_cell": 100, "accuracy": out}, indent=1))


if __name__ == "__main__":
    main()
