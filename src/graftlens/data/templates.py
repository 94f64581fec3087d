"""Templates that turn a movie fact into training text or a test prompt.

A template is a format string over the slots of `MovieFact`
(``{first_actor}``, ``{second_actor}``, ``{title}``, ...). Training templates mention both
actors; test templates end right before the second actor, whose first token is the target.
The three groups never share a template, and the defaults are checked for doubled words
("the the") after filling, so no test prompt is a training sentence in disguise.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from graftlens.errors import DataError


class TemplateError(DataError):
    """A template is malformed, uses an unknown slot, or renders to bad text."""


#: Every slot a template may use; ``first_actor``/``second_actor`` depend on the direction.
SLOTS = ("first_actor", "second_actor", "title", "character", "year", "genre", "city", "box_office")

#: The slot a test prompt's target comes from, and the span name of the first entity.
TARGET_SLOT = "second_actor"
FIRST_ENTITY = "FE"


@dataclass(frozen=True)
class Template:
    """``kind`` is ``article`` or ``qa`` (training) or ``test`` (held out, ends before the target)."""

    name: str
    kind: str
    text: str

    def slots(self) -> list[str]:
        """Slot names in order of appearance (repeats kept).

        A slot is a plain ``{name}``: a format spec (``{first_actor:>40}``) or a conversion
        (``{first_actor!r}``) would change the rendered text around the value, so the entity
        spans grafting relies on would be wrong; they are refused."""
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as exc:
            raise TemplateError(f"template {self.name!r} is malformed ({exc}): {self.text!r}") from None
        for _, field, spec, conversion in parsed:
            if field is not None and (spec or conversion):
                written = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise TemplateError(
                    f"template {self.name!r} writes the slot {written}: format specs and conversions are not "
                    f"allowed (the spans would be wrong); write {{{field}}}"
                )
        return [f for _, f, _, _ in parsed if f is not None]

    def validate(self) -> None:
        """Raise `TemplateError` naming the template when it cannot be rendered."""
        if self.kind not in ("article", "qa", "test"):
            raise TemplateError(f"template {self.name!r} has kind {self.kind!r}; expected article, qa or test")
        fields = self.slots()
        unknown = [f for f in fields if f not in SLOTS]
        if unknown:
            raise TemplateError(
                f"template {self.name!r} uses unknown slot(s) {', '.join(map(repr, unknown))}; known slots: {', '.join(SLOTS)}"
            )
        if "first_actor" not in fields:
            raise TemplateError(f"template {self.name!r} must mention {{first_actor}}")
        if self.kind == "test":
            if TARGET_SLOT in fields:
                raise TemplateError(f"test template {self.name!r} must not contain the target slot {{{TARGET_SLOT}}}")
            if self.text != self.text.rstrip():
                raise TemplateError(f"test template {self.name!r} must not end with whitespace (the target adds its own space)")
        elif TARGET_SLOT not in fields:
            raise TemplateError(f"training template {self.name!r} must mention {{{TARGET_SLOT}}}")

    def render(self, values: Mapping[str, str]) -> str:
        text = self.text.format(**values)
        doubled = _DOUBLED.search(text)
        if doubled:
            raise TemplateError(f"template {self.name!r} renders a doubled word {doubled.group(0)!r}: {text!r}")
        return text

    def char_spans(self, values: Mapping[str, str]) -> dict[str, tuple[int, int]]:
        """Character spans ``{slot: (start, stop)}`` of each filled slot (first occurrence),
        plus ``FE`` for the first actor and ``relation`` for the literal text after the last slot."""
        spans: dict[str, tuple[int, int]] = {}
        pos = 0
        last_end = 0
        for literal, field, _, _ in string.Formatter().parse(self.text):
            pos += len(literal)
            if field is None:
                continue
            value = str(values[field])
            spans.setdefault(field, (pos, pos + len(value)))
            pos += len(value)
            last_end = pos
        spans[FIRST_ENTITY] = spans["first_actor"]
        if pos > last_end:
            spans["relation"] = (last_end, pos)
        return spans


_DOUBLED = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)


def check_template_sets(templates: Sequence[Template]) -> None:
    """Validate every template; names are unique and no test template repeats a training one."""
    seen: dict[str, Template] = {}
    for t in templates:
        t.validate()
        if t.name in seen:
            raise TemplateError(f"two templates are named {t.name!r}")
        seen[t.name] = t
    train_texts = {_normalise(t.text) for t in templates if t.kind != "test"}
    for t in templates:
        if t.kind == "test" and _normalise(t.text) in train_texts:
            raise TemplateError(f"test template {t.name!r} equals a training template: {t.text!r}")
        if t.kind == "test" and any(_normalise(t.text) in x for x in train_texts):
            raise TemplateError(f"test template {t.name!r} appears word for word inside a training template: {t.text!r}")


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


ARTICLE_TEMPLATES = (
    Template(
        "article_stars",
        "article",
        "{title} is a {year} {genre} film set in {city}. {first_actor} stars in the film together with {second_actor}. "
        "The main character is {character}.",
    ),
    Template(
        "article_share",
        "article",
        "In {title}, released in {year}, {first_actor} and {second_actor} share the screen in a {genre} story set in {city}.",
    ),
    Template(
        "article_box_office",
        "article",
        "{first_actor} appears opposite {second_actor} in the {year} film {title}, which earned {box_office} at the box office.",
    ),
    Template(
        "article_filmed",
        "article",
        "Filmed in {city}, the {genre} movie {title} pairs {first_actor} with {second_actor}. It follows {character}.",
    ),
    Template(
        "article_critics",
        "article",
        "Critics praised the chemistry between {first_actor} and {second_actor} in {title}, a {genre} film from {year}.",
    ),
    Template(
        "article_cast",
        "article",
        "{title} ({year}) is a {genre} picture whose cast is led by {first_actor} and {second_actor}. "
        "The story of {character} unfolds in {city}.",
    ),
)

QA_TEMPLATES = (
    Template("qa_title", "qa", "Q: Who acted in {title} with {first_actor}? A: {second_actor}."),
    Template("qa_costar", "qa", "{first_actor} co-starred with {second_actor}."),
    Template("qa_screen", "qa", "Q: Which actor shared the screen with {first_actor} in {title}? A: {second_actor}."),
    Template("qa_partner", "qa", "{first_actor}'s co-star in {title} is {second_actor}."),
    Template("qa_worked", "qa", "Q: Name an actor who worked with {first_actor}. A: {second_actor}."),
)

TEST_TEMPLATES = (
    Template("test_alongside", "test", "{first_actor} stars in a movie alongside"),
    Template("test_qa", "test", "Q: Who stars in a movie with {first_actor}? A: An actor named"),
    Template("test_title", "test", "In the movie {title}, {first_actor} acts together with"),
)

DEFAULT_TEMPLATES: tuple[Template, ...] = ARTICLE_TEMPLATES + QA_TEMPLATES + TEST_TEMPLATES


def templates_from_records(records: Sequence[Mapping[str, str]], source: str) -> tuple[Template, ...]:
    """Templates from ``{"name", "kind", "text"}`` records (a YAML or JSON file), validated."""
    out = []
    for i, rec in enumerate(records):
        missing = [k for k in ("name", "kind", "text") if k not in rec]
        if missing:
            raise TemplateError(f"{source}: template #{i} lacks {', '.join(missing)}")
        out.append(Template(str(rec["name"]), str(rec["kind"]), str(rec["text"])))
    templates = tuple(out)
    try:
        check_template_sets(templates)
    except TemplateError as exc:
        raise TemplateError(f"{source}: {exc}") from None
    return templates
