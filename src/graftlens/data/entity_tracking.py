"""Entity tracking prompts (Kim & Schuster; Prakash et al.): which object is in which box.

``"The apple is in Box F, the key is in Box Q, the cup is in Box B. Box Q contains the"`` ->
target ``" key"``. Objects and box labels are chosen among those the tokenizer in use encodes
as a single token (with their leading space), so the target is one token, each box label is one
position, and every prompt with the same number of boxes has the same number of tokens (which
per-position mean ablation needs). Seeded: the same tokenizer and seed give the same prompts.

The vocabulary splits into two disjoint halves (``"train"`` and ``"test"``): a model finetuned on
entity tracking sees only the train half, and the circuit experiments use the test half, so a
gain is not memorised objects or labels.

Besides plain prompts, this module makes the *pairs* the circuit methods need, each a clean
scene with a corrupted scene of the same shape (stored as the clean prompt's ``meta["source"]``):

- ``corrupted`` (path patching, Prakash et al.): the corrupted scene has other objects and labels, asks
  about another box index, and its query label is a letter that labels no box in it;
- desiderata (DCM): ``position`` (the corrupted scene asks about another box index: the answer
  is the *clean* scene's object at the *corrupted* scene's index), ``object`` (the answer is the
  corrupted scene's object), ``box_label`` (the corrupted scene asks for a label that is in the
  clean context but is not the clean query: the answer is the clean scene's object in that box).
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from graftlens.data.dataset import DatasetError
from graftlens.data.prompts import TokenizedPrompt, tokenize_prompt

OBJECTS = (
    "apple",
    "key",
    "cup",
    "book",
    "coin",
    "ring",
    "hat",
    "shoe",
    "clock",
    "pen",
    "bell",
    "map",
    "bag",
    "box",
    "lamp",
    "toy",
    "egg",
    "fork",
    "knife",
    "plate",
    "phone",
    "watch",
    "card",
    "ball",
    "doll",
    "rope",
    "stone",
    "shell",
    "coat",
    "drum",
    "flag",
    "glove",
    "horn",
    "kite",
    "leaf",
    "mask",
    "nail",
    "pipe",
    "rose",
    "seed",
    "tape",
    "wire",
    "brush",
    "bread",
    "chair",
    "fan",
    "radio",
    "camera",
    "mirror",
    "bottle",
    "candle",
    "letter",
    "ticket",
    "wallet",
    "pillow",
)

Half = Literal["all", "train", "test"]
PAIR_KINDS = ("corrupted", "position", "object", "box_label")


@dataclass(frozen=True)
class Scene:
    """Objects in labelled boxes (``objects[i]`` in box ``labels[i]``), and the box asked about:
    ``query_label`` (usually ``labels[query]``; a letter labelling no box in a corrupted scene)."""

    objects: tuple[str, ...]
    labels: tuple[str, ...]
    query: int
    query_label: str

    def render(self) -> tuple[str, dict[str, tuple[int, int]]]:
        """The prompt and its character spans: ``correct_object`` and ``correct_box`` (the queried
        index's object and label in the context) and ``query_box`` (the label in the question)."""
        parts, spans, pos = [], {}, 0
        for j, (o, b) in enumerate(zip(self.objects, self.labels)):
            piece = f"The {o} is in Box {b}" if j == 0 else f", the {o} is in Box {b}"
            if j == self.query:
                o_start = pos + piece.index(f" {o} ") + 1
                b_start = pos + len(piece) - len(b)
                spans["correct_object"] = (o_start, o_start + len(o))
                spans["correct_box"] = (b_start, b_start + len(b))
            parts.append(piece)
            pos += len(piece)
        context = "".join(parts) + "."
        prompt = f"{context} Box {self.query_label} contains the"
        q_start = len(context) + len(" Box ")
        spans["query_box"] = (q_start, q_start + len(self.query_label))
        return prompt, spans


@dataclass(frozen=True)
class EntityTrackingExample:
    id: str
    prompt: str
    target: str
    char_spans: dict[str, tuple[int, int]]
    boxes: dict[str, str]  # label -> object
    query_index: int = 0
    kind: str = "plain"  # "plain" or a pair kind
    source: EntityTrackingExample | None = None  # the source scene of a pair


@dataclass(frozen=True)
class Vocabulary:
    objects: tuple[str, ...]
    labels: tuple[str, ...]


def single_token_words(tokenizer, words: Sequence[str]) -> list[str]:
    """The words that ``tokenizer`` encodes as one token after a space."""
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def vocabulary(tokenizer, half: Half = "all") -> Vocabulary:
    """Single-token objects and box labels; ``"train"``/``"test"`` take alternate ones (disjoint)."""
    objects = single_token_words(tokenizer, OBJECTS)
    labels = single_token_words(tokenizer, list(string.ascii_uppercase))
    if half != "all":
        start = 0 if half == "train" else 1
        objects, labels = objects[start::2], labels[start::2]
    return Vocabulary(tuple(objects), tuple(labels))


def check_boxes(vocab: Vocabulary, n_boxes: int, half: str, spare_labels: int = 0) -> None:
    """``n_boxes`` boxes can be made of ``vocab``'s single-token objects and labels, or one error saying why not."""
    if n_boxes < 2:
        raise DatasetError(f"entity tracking needs at least 2 boxes, not {n_boxes}")
    if len(vocab.objects) < n_boxes or len(vocab.labels) < n_boxes + spare_labels:
        raise DatasetError(
            f"the tokenizer has only {len(vocab.objects)} single-token objects and {len(vocab.labels)} single-token box "
            f"labels (vocabulary half {half!r}); {n_boxes} boxes need {n_boxes} of each"
            + (f" and {spare_labels} more label(s) for the corrupted query" if spare_labels else "")
        )


def _scene(vocab: Vocabulary, n_boxes: int, rng: random.Random, query: int | None = None) -> Scene:
    objects = tuple(rng.sample(vocab.objects, n_boxes))
    labels = tuple(rng.sample(vocab.labels, n_boxes))
    q = rng.randrange(n_boxes) if query is None else query
    return Scene(objects, labels, q, labels[q])


def _example(id: str, scene: Scene, answer: str, kind: str = "plain", source: EntityTrackingExample | None = None):
    prompt, spans = scene.render()
    return EntityTrackingExample(
        id, prompt, " " + answer, spans, dict(zip(scene.labels, scene.objects)), scene.query, kind, source
    )


def make_entity_tracking(
    tokenizer, n_examples: int = 100, n_boxes: int = 7, seed: int = 0, half: Half = "all"
) -> list[EntityTrackingExample]:
    """``n_examples`` plain prompts of ``n_boxes`` boxes each."""
    vocab = vocabulary(tokenizer, half)
    check_boxes(vocab, n_boxes, half)
    rng = random.Random(seed)
    out = []
    for i in range(n_examples):
        scene = _scene(vocab, n_boxes, rng)
        out.append(_example(f"entity-{seed}-{i:04d}", scene, scene.objects[scene.query]))
    return out


def make_pairs(
    tokenizer, kind: str, n_examples: int = 100, n_boxes: int = 7, seed: int = 0, half: Half = "all"
) -> list[EntityTrackingExample]:
    """``n_examples`` base prompts each with a source prompt of the same shape (see the module docstring)."""
    if kind not in PAIR_KINDS:
        raise DatasetError(f"unknown entity-tracking pair kind {kind!r}; known: {', '.join(PAIR_KINDS)}")
    vocab = vocabulary(tokenizer, half)
    check_boxes(vocab, n_boxes, half, spare_labels=1 if kind == "corrupted" else 0)
    rng = random.Random(f"{kind}-{seed}")
    out = []
    for i in range(n_examples):
        base = _scene(vocab, n_boxes, rng)
        other = (base.query + rng.randrange(1, n_boxes)) % n_boxes  # another box index
        source = _scene(vocab, n_boxes, rng, query=other)
        answer = base.objects[base.query]
        if kind == "corrupted":
            # The paper's noise input: another scene, another index, a query label naming no box.
            source = replace(source, query_label=rng.choice([x for x in vocab.labels if x not in source.labels]))
        elif kind == "position":
            answer = base.objects[source.query]
        elif kind == "object":
            answer = source.objects[source.query]
        else:  # box_label: the source asks for a label of the base context, at another index
            labels = list(source.labels)
            taken = base.labels[other]
            if taken in labels:  # keep the source's labels distinct
                labels[labels.index(taken)] = next(x for x in vocab.labels if x not in labels and x != taken)
            labels[other] = taken
            source = Scene(source.objects, tuple(labels), other, taken)
            answer = base.objects[other]
        sid = f"{kind}-{n_boxes}b-{seed}-{i:04d}"
        src = _example(sid + "-source", source, source.objects[source.query])
        out.append(_example(sid, base, answer, kind, src))
    return out


MeanQuery = Literal["no_box", "any_label"]


def mean_reference(
    tokenizer, n_examples: int, n_boxes: int, seed: int = 0, half: Half = "all", query: MeanQuery = "no_box"
) -> list[EntityTrackingExample]:
    """Prompts for mean ablation (Prakash et al.): scenes whose query label names no box in them
    (``query="no_box"``), or is any label, drawn uniformly, so that it names one of the scene's
    boxes as often as chance has it (``"any_label"``: the paper's code, which draws a letter A–Z)."""
    vocab = vocabulary(tokenizer, half)
    check_boxes(vocab, n_boxes, half, spare_labels=1)
    rng = random.Random(f"mean-{seed}" if query == "no_box" else f"mean-{query}-{seed}")
    out = []
    for i in range(n_examples):
        scene = _scene(vocab, n_boxes, rng)
        choices = [x for x in vocab.labels if query == "any_label" or x not in scene.labels]
        scene = replace(scene, query_label=rng.choice(choices))
        out.append(_example(f"mean-{n_boxes}b-{seed}-{i:04d}", scene, scene.objects[scene.query]))
    return out


def tokenize_entity_tracking(examples: list[EntityTrackingExample], tokenizer) -> list[TokenizedPrompt]:
    """Tokenized prompts; a pair's source rides along in ``meta["source"]`` (a TokenizedPrompt),
    and ``meta["template"]`` names the box count (plain prompts) or the pair kind."""
    out = []
    for e in examples:
        n = len(e.boxes)
        meta = {
            "boxes": e.boxes,
            "n_boxes": n,
            "query_index": e.query_index,
            "kind": e.kind,
            "template": f"{n} boxes" if e.kind in ("plain", "corrupted") else e.kind,
        }
        if e.source is not None:
            meta["source"] = tokenize_prompt(tokenizer, e.source.id, e.source.prompt, e.source.target, e.source.char_spans)
        out.append(tokenize_prompt(tokenizer, e.id, e.prompt, e.target, e.char_spans, meta))
    return out
