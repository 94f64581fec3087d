"""Task datasets to finetune on, in the shape `graftlens.train.finetune` takes.

Prakash et al. compare a model with finetunes that were never trained on entity tracking and
yet track entities better (Goat, FLoat: arithmetic). ``arithmetic`` is the Goat analogue here:
sums, differences and small products written as ``"What is 12 + 35? 12 + 35 = 47"``.
``entity_tracking`` trains on entity tracking itself, with the *train* half of the objects and
box labels only (`graftlens.data.entity_tracking.vocabulary`), and tests on the other half.
"""

from __future__ import annotations

import hashlib
import json
import random

from graftlens.data.dataset import FactDataset, TestExample, TrainText
from graftlens.data.entity_tracking import make_entity_tracking

TASKS = ("arithmetic", "entity_tracking")


def _problem(rng: random.Random) -> tuple[str, int]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randrange(2, 100), rng.randrange(2, 10)
        return f"{a} * {b}", a * b
    a, b = rng.randrange(0, 1000), rng.randrange(0, 1000)
    if op == "-" and b > a:
        a, b = b, a
    return f"{a} {op} {b}", a + b if op == "+" else a - b


def _arithmetic(n_train: int, n_test: int, seed: int) -> tuple[list[TrainText], list[TestExample]]:
    rng = random.Random(f"arithmetic-{seed}")
    train, test, seen = [], [], set()
    while len(train) + len(test) < n_train + n_test:
        expr, value = _problem(rng)
        if expr in seen:
            continue
        seen.add(expr)
        if len(train) < n_train:
            train.append(TrainText(f"What is {expr}? {expr} = {value}", expr, "", "arithmetic", "A"))
        else:
            prompt = f"What is {expr}? {expr} ="
            test.append(TestExample(f"arith-{len(test):04d}", expr, "", "arithmetic", "A", prompt, f" {value}"))
    return train, test


def _entity_tracking(tokenizer, n_train: int, n_test: int, seed: int) -> tuple[list[TrainText], list[TestExample]]:
    train = []
    for i in range(n_train):
        n_boxes = 2 + i % 6  # 2..7 boxes, in turn
        (ex,) = make_entity_tracking(tokenizer, 1, n_boxes, seed=seed * 100_003 + i, half="train")
        train.append(TrainText(ex.prompt + ex.target, ex.id, "", f"{n_boxes} boxes", "A"))
    test = []
    for i in range(n_test):
        n_boxes = 2 + i % 6
        (ex,) = make_entity_tracking(tokenizer, 1, n_boxes, seed=seed * 100_003 + n_train + i, half="test")
        test.append(TestExample(f"et-{i:04d}", ex.id, "", f"{n_boxes} boxes", "A", ex.prompt, ex.target))
    return train, test


def task_dataset(kind: str, tokenizer, n_train: int, seed: int = 0, n_test: int = 60) -> FactDataset:
    """``n_train`` training texts of task ``kind`` and ``n_test`` held-out test prompts."""
    if kind == "arithmetic":
        train, test = _arithmetic(n_train, n_test, seed)
    elif kind == "entity_tracking":
        train, test = _entity_tracking(tokenizer, n_train, n_test, seed)
    else:
        raise ValueError(f"unknown finetuning task {kind!r}; known: {', '.join(TASKS)}")
    text = json.dumps([[t.text for t in train], [(e.prompt, e.target) for e in test]])
    meta = {
        "format_version": 1,
        "kind": f"task:{kind}",
        "n_train": n_train,
        "seed": seed,
        "counts": {"facts": 0, "train": len(train), "test": len(test)},
        "content_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
    }
    return FactDataset(meta, (), tuple(train), tuple(test))
