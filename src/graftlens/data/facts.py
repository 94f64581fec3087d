"""Seeded generators of new facts: made-up movies whose two lead actors co-star.

Two kinds (Nief et al.): *fake movies, fake actors* (Faker-made names) and *fake movies, real
actors* (names from the shipped ``files/real_actors.txt``; nothing else about them is used).
Every actor appears in one fact only, and within a dataset no two actors share a first or a
last name, so a first name never gives the answer away. The same seed gives the same facts
on every machine (Faker and ``random.Random`` are seeded; no global state is touched).
"""

from __future__ import annotations

import importlib
import random
from dataclasses import asdict, dataclass
from importlib import resources

from faker import Faker
from faker.providers.person.en_US import Provider as PersonProvider

from graftlens.errors import DataError


class FactError(DataError):
    """A fact set cannot be generated as asked (too many facts for the name pool, ...)."""


@dataclass(frozen=True)
class MovieFact:
    """One new fact: ``first_actor`` and ``second_actor`` star together in ``title``.

    ``split`` is ``"A"`` or ``"B"``: disjoint halves for a *task model* (trained on A) and a
    *relation model* (trained on B)."""

    id: str
    first_actor: str
    second_actor: str
    title: str
    character: str
    year: str
    genre: str
    city: str
    box_office: str
    split: str

    def slot_values(self, direction: str) -> dict[str, str]:
        """Slot values for a template; ``backward`` swaps the two actors (B -> A)."""
        values = asdict(self)
        del values["id"], values["split"]
        if direction == "backward":
            values["first_actor"], values["second_actor"] = values["second_actor"], values["first_actor"]
        elif direction != "forward":
            raise FactError(f"direction must be 'forward' or 'backward', not {direction!r}")
        return values


DIRECTIONS = ("forward", "backward")

KINDS = ("fake_actors", "real_actors")

# Genres start with a consonant so "a {genre} film" reads right.
GENRES = ("drama", "comedy", "thriller", "western", "musical", "mystery", "romance", "horror", "fantasy", "crime", "war", "spy")
_TITLE_ADJECTIVES = tuple(
    "Silent Crimson Hollow Last Broken Golden Distant Forgotten Velvet Burning Quiet Frozen Midnight Paper Iron "
    "Scarlet Wandering Hidden Electric Painted Restless Copper Northern Glass Secret Lonely Amber Shattered Endless "
    "Borrowed".split()
)
_TITLE_NOUNS = tuple(
    "Harbor Lantern Orchard Frontier Garden Signal Compass Meridian Canyon Tide Letters Orbit Carnival Lighthouse "
    "Kingdom Voyage Echo Summer River Empire Archive Horizon Mirror Station Island Winter Crossing Parade Circuit "
    "Shadows".split()
)
_ROLES = tuple(
    "a retired detective; a young pilot; a struggling painter; a small-town doctor; an exiled prince; a jazz "
    "pianist; a marine biologist; a disgraced chef; a rookie reporter; a lighthouse keeper; a chess prodigy; a "
    "runaway bride; an aging boxer; a border guard; a travelling magician; a code breaker; a mountain guide; a "
    "school teacher; a getaway driver; a ballet dancer".split("; ")
)


def real_actor_names() -> list[str]:
    """The shipped list of real actor names (comments and blank lines skipped)."""
    text = resources.files("graftlens.data").joinpath("files/real_actors.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _split_name(name: str) -> tuple[str, str]:
    parts = name.split()
    return parts[0], parts[-1]


class _NamePool:
    """Hands out names whose first and last names were not handed out before."""

    def __init__(self) -> None:
        self.firsts: set[str] = set()
        self.lasts: set[str] = set()

    def take(self, name: str) -> bool:
        first, last = _split_name(name)
        if first in self.firsts or last in self.lasts or first == last:
            return False
        self.firsts.add(first)
        self.lasts.add(last)
        return True


# English-speaking locales whose names widen the pool beyond en_US's, for datasets larger than it
# allows (smaller ones draw from en_US alone, as they always have).
_MORE_NAME_LOCALES = ("en_GB", "en_IE", "en_NZ")


def _name_lists(n_names: int) -> tuple[list[str], list[str]]:
    """First and last names to draw ``n_names`` names from: en_US's when they suffice, else the
    union with the other English locales' (single plain words only: spans and tokens stay simple)."""
    firsts, lasts = set(PersonProvider.first_names), set(PersonProvider.last_names)
    if n_names <= min(len(firsts), len(lasts)):
        return sorted(firsts), sorted(lasts)

    for locale in _MORE_NAME_LOCALES:
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        for attr, into in (
            ("first_names", firsts),
            ("first_names_male", firsts),
            ("first_names_female", firsts),
            ("last_names", lasts),
        ):
            into.update(x for x in getattr(provider, attr, ()) if x.isascii() and x.isalpha())
    return sorted(firsts), sorted(lasts)


def fake_actor_capacity() -> int:
    """How many fake_actors facts can have actors with distinct first and last names."""
    firsts, lasts = _name_lists(10**9)
    return min(len(firsts), len(lasts)) // 2


def _fake_actor_names(n: int, faker: Faker, pool: _NamePool) -> list[str]:
    names: list[str] = []
    # Uniform over Faker's name lists (not its frequency weights), so common first names such
    # as "Michael" are no likelier than rare ones: a guessable target would inflate PRE.
    firsts, lasts = _name_lists(n)
    rng = faker.random
    for _ in range(200 * n):
        if len(names) == n:
            return names
        name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
        if pool.take(name):
            names.append(name)
    raise FactError(f"could not draw {n} fake actor names with distinct first and last names")


def _real_actor_names(n: int, rng: random.Random, pool: _NamePool) -> list[str]:
    candidates = real_actor_names()
    rng.shuffle(candidates)
    names = [c for c in candidates if pool.take(c)][:n]
    if len(names) < n:
        raise FactError(
            f"only {len(names)} real actors with distinct first and last names are available; asked for {n} "
            f"({n // 2} facts); lower the fact count"
        )
    return names


def generate_facts(kind: str = "fake_actors", n_facts: int = 16, seed: int = 0) -> list[MovieFact]:
    """``n_facts`` new movie facts, split alternately into halves ``A`` and ``B``."""
    if kind not in KINDS:
        raise FactError(f"unknown fact kind {kind!r}; choose one of {', '.join(KINDS)}")
    if n_facts < 1:
        raise FactError(f"n_facts must be at least 1, not {n_facts}")
    max_titles = len(_TITLE_ADJECTIVES) * len(_TITLE_NOUNS)
    if n_facts > max_titles:
        raise FactError(f"at most {max_titles} distinct titles can be made; asked for {n_facts} facts")
    if kind == "fake_actors":  # each fact takes two names with first and last names not used before
        capacity = fake_actor_capacity()
        if n_facts > capacity:
            raise FactError(f"at most {capacity} fake_actors facts can have actors with distinct names; asked for {n_facts}")
    rng = random.Random(seed)
    faker = Faker("en_US")
    faker.seed_instance(seed)
    pool = _NamePool()
    names = _fake_actor_names(2 * n_facts, faker, pool) if kind == "fake_actors" else _real_actor_names(2 * n_facts, rng, pool)
    titles = rng.sample([f"The {a} {b}" for a in _TITLE_ADJECTIVES for b in _TITLE_NOUNS], n_facts)
    facts = []
    for i in range(n_facts):
        facts.append(
            MovieFact(
                id=f"{kind}-{seed}-{i:04d}",
                first_actor=names[2 * i],
                second_actor=names[2 * i + 1],
                title=titles[i],
                character=rng.choice(_ROLES),
                year=str(rng.randint(1975, 2024)),
                genre=rng.choice(GENRES),
                city=faker.city(),
                box_office=f"${rng.randint(5, 900)} million",
                split="A" if i % 2 == 0 else "B",
            )
        )
    return facts
