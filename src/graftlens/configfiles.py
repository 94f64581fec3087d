"""YAML configuration files validated by pydantic, with one clear error naming the culprit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, Field, ValidationError

from graftlens.errors import RecipeError
from graftlens.fileio import read_utf8

M = TypeVar("M", bound=BaseModel)

#: A seed, as every random source graftlens seeds takes it (NumPy's are below 2**32).
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class ConfigFileError(RecipeError):
    """A configuration file is missing, is not YAML, or holds an unknown key or a bad value."""


def read_yaml(path: Path, what: str) -> object:
    """The content of the YAML (or JSON) file ``path`` (``what`` names the file in errors)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"{what} {path} does not exist")
    try:
        return yaml.load(read_utf8(path), Loader=_unique_keys_loader())  # noqa: S506 - a SafeLoader
    except (_DuplicateKey, _TooLarge) as exc:
        raise ConfigFileError(f"{what} {path}: {exc}") from None
    except RecursionError:
        raise ConfigFileError(f"{what} {path} is nested too deeply to be a configuration") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigFileError(f"{what} {path} is not valid YAML{where}: {problem}") from None


class _DuplicateKey(Exception):
    pass


class _TooLarge(Exception):
    pass


#: The most values a configuration file may hold once its aliases are expanded. Anchors and
#: aliases (``&name`` / ``*name``) are allowed for sharing a block, but ten lines of nested aliases
#: can stand for billions of values ("billion laughs"): every later step (validation, hashing,
#: expansion) would walk them all, so such a file is refused before anything is built.
MAX_EXPANDED_VALUES = 100_000


def _unique_keys_loader():
    """PyYAML's SafeLoader, refusing a key written twice in one mapping (it would keep the last
    silently, and a recipe's earlier line would mean nothing)."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def get_single_node(self):
            node = super().get_single_node()
            if node is not None:
                _check_expanded_size(node)
            return node

        def construct_mapping(self, node, deep=False):
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise _DuplicateKey(f"key {key!r} is written twice (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeys


def _check_expanded_size(root) -> None:
    """Refuse a composed YAML document that stands for more than ``MAX_EXPANDED_VALUES`` values
    or refers to itself. An alias is the anchored node itself, so sizes are counted once per node
    (linear in the file's length however large the expansion)."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _TooLarge(f"an alias refers to a block that holds it (line {node.start_mark.line + 1})")
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        open_nodes.discard(key)
        if total > MAX_EXPANDED_VALUES:
            raise _TooLarge(
                f"its aliases expand to more than {MAX_EXPANDED_VALUES:,} values (the block at line "
                f"{node.start_mark.line + 1}); write the values out instead of nesting aliases"
            )
        sizes[key] = total
        return total

    size(root)


def read_yaml_mapping(path: Path, what: str) -> dict:
    """The mapping at the top of the YAML file ``path`` (``what`` names the file in errors)."""
    loaded = read_yaml(path, what)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigFileError(f"{what} {path} must be a mapping of keys to values, not a {type(loaded).__name__}")
    return loaded


def non_finite(values: object, path: str = "") -> tuple[str, float] | None:
    """The first number in ``values`` (nested mappings and lists) that is ``inf`` or ``nan``, as
    ``(dotted path, value)``; None when every number is finite."""
    if isinstance(values, float) and not math.isfinite(values):
        return path, values
    items = values.items() if isinstance(values, dict) else enumerate(values) if isinstance(values, list) else ()
    for key, value in items:
        found = non_finite(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def validated(model: type[M], values: dict, what: str, source: Path | None = None) -> M:
    """``model(**values)``, turning pydantic's report into one line naming the first bad key.

    One rule for every file: its numbers are finite (a YAML ``.inf`` or ``.nan`` is refused
    wherever it stands, before any field's own check)."""
    found = non_finite(values)
    if found is not None:
        place = f" in {source}" if source is not None else ""
        raise ConfigFileError(f"{what} setting {found[0]!r}{place}: {found[1]} is not a finite number (no inf or nan)")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigFileError(validation_message(exc, values, what, source)) from None


def validation_message(exc: ValidationError, values: object, what: str, source: Path | None = None) -> str:
    """One line for the most telling error: an unknown key (often a typo) before anything else."""
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    err = (unknown or errors)[0]
    where = _key_path(values, err["loc"]) or what
    place = f" in {source}" if source is not None else ""
    if err["type"] == "extra_forbidden":
        parent = where.rpartition(".")[0]
        missing = [_key_path(values, e["loc"]) for e in errors if e["type"] == "missing"]
        missing = [m.rpartition(".")[2] for m in missing if m.rpartition(".")[0] == parent]
        hint = f" (missing there: {', '.join(repr(m) for m in missing)})" if missing else ""
        return f"unknown {what} key {where!r}{place}{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{what} setting {where!r}{place}: {msg}"


def _key_path(values: object, loc: tuple) -> str:
    """The dotted path of ``loc`` in the user's data, without the labels pydantic adds for unions."""
    parts: list[str] = []
    node = values
    for i, key in enumerate(loc):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        elif i != len(loc) - 1:
            continue  # a union member's label, not a key of the file
        parts.append(str(key))
    return ".".join(parts)
