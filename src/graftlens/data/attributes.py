"""Attribute sets of subjects, for Geva et al.'s attribute rate.

Geva et al. (2023, §5) ask how much a projection of the hidden state at the last subject token
"knows" about the subject: the share of its top-k tokens (k = 50) that belong to a set of
candidate attributes of the subject, the tokens of a text about the subject with stopwords and
the subject's own tokens removed. They took paragraphs about each subject from Wikipedia; the
shipped ``files/subject_texts.jsonl`` holds, for each subject of the shipped known facts, a few
sentences written for graftlens to play that part (offline, no download). A user's known-facts
file ``facts.jsonl`` takes its texts from ``subject_texts.jsonl`` in the same folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

from graftlens.data.dataset import DatasetError, jsonl_records
from graftlens.fileio import read_utf8

SUBJECT_TEXTS = "subject_texts.jsonl"
ATTRIBUTE_K = 50  # the top-k of the projection that is compared with the attribute set (Geva et al.)

# English stopwords (the NLTK list), plus a few words every subject text uses.
STOPWORDS = frozenset(
    """
    a about above after again against ain all am an and any are aren as at be because been before
    being below between both but by can couldn d did didn do does doesn doing don down during each
    few for from further had hadn has hasn have haven having he her here hers herself him himself
    his how i if in into is isn it its itself just ll m ma me mightn more most mustn my myself
    needn no nor not now o of off on once only or other our ours ourselves out over own re s same
    shan she should shouldn so some such t than that the their theirs them themselves then there
    these they this those through to too under until up ve very was wasn we were weren what when
    where which while who whom why will with won wouldn y you your yours yourself yourselves
    also known many one two called often made became later whose
    """.split()
)

_WORD = re.compile(r"[^\W\d_](?:[^\W_]|['’-][^\W_])*|\d+", re.UNICODE)


def load_subject_texts(known_facts_path: str | Path | None = None) -> dict[str, str]:
    """``subject → text``: the shipped texts, or ``subject_texts.jsonl`` beside a user's known-facts file."""
    if known_facts_path is None:
        text = resources.files("graftlens.data").joinpath(f"files/{SUBJECT_TEXTS}").read_text(encoding="utf-8")
        source = f"{SUBJECT_TEXTS} (shipped)"
    else:
        path = Path(known_facts_path).parent / SUBJECT_TEXTS
        if not path.is_file():
            raise DatasetError(
                f"the attribute rate needs a text about each subject: put {SUBJECT_TEXTS} beside "
                f"{known_facts_path} (one JSON object per line: subject, text)"
            )
        text, source = read_utf8(path), str(path)
    out: dict[str, str] = {}
    for n, rec in jsonl_records(text, source):
        if not isinstance(rec, dict) or sorted(rec) != ["subject", "text"] or not all(isinstance(v, str) for v in rec.values()):
            raise DatasetError(f"{source}:{n}: expected the keys subject, text (strings)")
        if rec["subject"] in out:
            raise DatasetError(f"{source}:{n}: a second text for subject {rec['subject']!r}")
        out[rec["subject"]] = rec["text"]
    return out


def _content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text) if w.lower() not in STOPWORDS and len(w) > 1]


def attribute_token_ids(tokenizer, text: str, subject: str) -> frozenset[int]:
    """The candidate attributes of ``subject`` as token ids, from the content words of ``text``.

    A word counts by the token that starts it mid-sentence (``" Paris"``, or ``" Gust"`` for
    "Gustave"), and by its bare form when that is one token (``"Paris"``), as a projection's top
    tokens are such word starts. Dropped: word pieces that decode to a stopword or to fewer than
    two letters, and every token of the subject itself."""

    def starts(words: Iterable[str]) -> set[int]:
        out: set[int] = set()
        for w in words:
            spaced = tokenizer.encode(" " + w, add_special_tokens=False)
            bare = tokenizer.encode(w, add_special_tokens=False)
            out.update(spaced[:1])
            if len(bare) == 1:
                out.update(bare)
        return out

    # Every token of the subject's words, bare or after a space (a superset of their starts).
    subject_ids = {t for w in _WORD.findall(subject) for v in (w, " " + w) for t in tokenizer.encode(v, add_special_tokens=False)}
    keep = set()
    for token in starts(_content_words(text)) - subject_ids:
        piece = tokenizer.decode([token]).strip()
        letters = sum(ch.isalpha() for ch in piece)
        if (letters >= 2 or piece.isdigit()) and piece.lower() not in STOPWORDS:
            keep.add(token)
    return frozenset(keep)


def subject_attribute_sets(
    subjects: Iterable[str], texts: Mapping[str, str], tokenizer, source: str
) -> dict[str, frozenset[int]]:
    """Attribute token ids of each subject; a subject without a text is an error naming it."""
    out: dict[str, frozenset[int]] = {}
    for subject in dict.fromkeys(subjects):
        if subject not in texts:
            raise DatasetError(f"{source} has no text about the subject {subject!r}: the attribute rate needs one")
        out[subject] = attribute_token_ids(tokenizer, texts[subject], subject)
    return out
