"""Entity tracking prompts (Kim & Schuster; Prakash et al.): which object is in which box.

``"The apple is in Box F, the key is in Box Q, the cup is in Box B. Box Q contains the"`` ->
target ``" key"``. Objects and box labels are chosen among those the tokenizer in use encodes
as a single token (with their leading space), so the target is one token and each box label
is one position. Seeded: the same tokenizer and seed give the same prompts.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from graftlens.data.dataset import DatasetError
from graftlens.data.prompts import TokenizedPrompt, tokenize_prompt

OBJECTS = (
    "apple", "key", "cup", "book", "coin", "ring", "hat", "shoe", "clock", "pen", "bell", "map", "bag", "box", "lamp",
    "toy", "egg", "fork", "knife", "plate", "phone", "watch", "card", "ball", "doll", "rope", "stone", "shell", "coat",
    "drum", "flag", "glove", "horn", "kite", "leaf", "mask", "nail", "pipe", "rose", "seed", "tape", "wire", "brush",
    "bread", "chair", "fan", "radio", "camera", "mirror", "bottle", "candle", "letter", "ticket", "wallet", "pillow",
)  # fmt: skip


@dataclass(frozen=True)
class EntityTrackingExample:
    id: str
    prompt: str
    target: str
    char_spans: dict[str, tuple[int, int]]
    boxes: dict[str, str]  # label -> object


def single_token_words(tokenizer, words: list[str] | tuple[str, ...]) -> list[str]:
    """The words that ``tokenizer`` encodes as one token after a space."""
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def make_entity_tracking(tokenizer, n_examples: int = 100, n_boxes: int = 7, seed: int = 0) -> list[EntityTrackingExample]:
    objects = single_token_words(tokenizer, OBJECTS)
    labels = single_token_words(tokenizer, list(string.ascii_uppercase))
    if n_boxes < 2:
        raise DatasetError(f"entity tracking needs at least 2 boxes, not {n_boxes}")
    if len(objects) < n_boxes or len(labels) < n_boxes:
        raise DatasetError(
            f"the tokenizer has only {len(objects)} single-token objects and {len(labels)} single-token box labels; "
            f"{n_boxes} boxes need {n_boxes} of each"
        )
    rng = random.Random(seed)
    out = []
    for i in range(n_examples):
        objs = rng.sample(objects, n_boxes)
        labs = rng.sample(labels, n_boxes)
        query = rng.randrange(n_boxes)
        parts, spans, pos = [], {}, 0
        for j, (o, b) in enumerate(zip(objs, labs)):
            piece = f"The {o} is in Box {b}" if j == 0 else f", the {o} is in Box {b}"
            if j == query:
                o_start = pos + piece.index(f" {o} ") + 1
                b_start = pos + len(piece) - len(b)
                spans["correct_object"] = (o_start, o_start + len(o))
                spans["correct_box"] = (b_start, b_start + len(b))
            parts.append(piece)
            pos += len(piece)
        context = "".join(parts) + "."
        prompt = f"{context} Box {labs[query]} contains the"
        q_start = len(context) + len(" Box ")
        spans["query_box"] = (q_start, q_start + len(labs[query]))
        out.append(EntityTrackingExample(f"entity-{seed}-{i:04d}", prompt, " " + objs[query], spans, dict(zip(labs, objs))))
    return out


def tokenize_entity_tracking(examples: list[EntityTrackingExample], tokenizer) -> list[TokenizedPrompt]:
    return [tokenize_prompt(tokenizer, e.id, e.prompt, e.target, e.char_spans, {"boxes": e.boxes}) for e in examples]
