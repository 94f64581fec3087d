"""The one vocabulary of component and layer names, used by the library and the CLI alike.

Per layer: ``q k v o`` (group ``attn``; ``qkv`` is attention without its output projection, the
papers' "ATTN" beside "O"), ``gate up down`` (group ``mlp``; ``gate`` only on gated
MLPs), ``ln_attn ln_mlp`` (group ``ln``). Model-wide: ``embed lm_head ln_final``. ``all`` is
every component. Several names join with ``+`` or ``,``: ``"o+mlp"``.

Layer selections: an int, a list/range of ints, ``"all"``, ``"3"``, ``"2-5"`` (inclusive),
``"1,4,7"``, halves ``half1 half2``, quarters ``quarter1..quarter4``, eighths ``eighth1..eighth8``,
and the aliases ``first_half second_half last_quarter``. Groups split the layers as evenly as
possible, earlier groups taking the extra layer (30 layers in quarters: 8, 8, 7, 7).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from graftlens.errors import LayerSelectionError, UnknownComponentError

Head = tuple[int, int]
"""A head: ``(layer, query head)``, both from 0."""

LAYER_COMPONENTS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down", "ln_attn", "ln_mlp")
MODEL_COMPONENTS: tuple[str, ...] = ("embed", "lm_head", "ln_final")
COMPONENT_GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ("q", "k", "v", "o"),
    "qkv": ("q", "k", "v"),
    "mlp": ("gate", "up", "down"),
    "ln": ("ln_attn", "ln_mlp"),
    "layer": LAYER_COMPONENTS,
    "all": LAYER_COMPONENTS + MODEL_COMPONENTS,
}
ALL_COMPONENT_NAMES: tuple[str, ...] = LAYER_COMPONENTS + MODEL_COMPONENTS + tuple(COMPONENT_GROUPS)


def _split_names(spec: str | Iterable[str]) -> list[str]:
    items = [spec] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        names.extend(p.strip() for p in re.split(r"[+,]", str(item)) if p.strip())
    return names


def expand_components(spec: str | Iterable[str], available: Sequence[str] | None = None) -> tuple[str, ...]:
    """Canonical component names, in canonical order, from names and groups.

    ``available``: the components the model has. Group members it lacks are dropped
    (``mlp`` on GPT-2 is ``up, down``); a component named explicitly that it lacks is an error.
    """
    chosen: set[str] = set()
    names = _split_names(spec)
    if not names:
        raise UnknownComponentError("no component given; choose from: " + " ".join(ALL_COMPONENT_NAMES))
    for name in names:
        if name in COMPONENT_GROUPS:
            members = COMPONENT_GROUPS[name]
            chosen.update(m for m in members if available is None or m in available)
        elif name in LAYER_COMPONENTS or name in MODEL_COMPONENTS:
            if available is not None and name not in available:
                raise UnknownComponentError(f"component {name!r} is absent from this model (it has: {' '.join(available)})")
            chosen.add(name)
        else:
            raise UnknownComponentError(f"unknown component {name!r}; choose from: {' '.join(ALL_COMPONENT_NAMES)}")
    order = LAYER_COMPONENTS + MODEL_COMPONENTS
    return tuple(c for c in order if c in chosen)


def layer_groups(n_layers: int, parts: int) -> list[list[int]]:
    """Split ``range(n_layers)`` into ``parts`` contiguous groups, earlier ones one larger."""
    base, extra = divmod(n_layers, parts)
    groups, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


_GROUP_PARTS = {"half": 2, "quarter": 4, "eighth": 8}
_ALIASES = {"first_half": "half1", "second_half": "half2", "last_quarter": "quarter4"}


def select_layers(spec: int | str | Iterable[int] | range | None, n_layers: int) -> tuple[int, ...]:
    """Resolve a layer selection to sorted unique layer indices, each in ``[0, n_layers)``."""
    if spec is None:
        spec = "all"
    if isinstance(spec, bool):
        raise LayerSelectionError(f"bad layer selection {spec!r}")
    if isinstance(spec, int):
        layers = [spec]
    elif isinstance(spec, str):
        layers = _parse_layer_string(spec.strip(), n_layers)
    else:
        try:
            layers = [int(x) for x in spec]
        except (TypeError, ValueError) as exc:
            raise LayerSelectionError(f"bad layer selection {spec!r}: {exc}") from None
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise LayerSelectionError(
                f"layer {layer} out of range in selection {spec!r}: the model has {n_layers} layers (0..{n_layers - 1})"
            )
    return tuple(sorted(set(layers)))


def _parse_layer_string(text: str, n_layers: int) -> list[int]:
    text = _ALIASES.get(text, text)
    if text == "all":
        return list(range(n_layers))
    m = re.fullmatch(r"(half|quarter|eighth)(\d+)", text)
    if m:
        parts, k = _GROUP_PARTS[m.group(1)], int(m.group(2))
        if not 1 <= k <= parts:
            raise LayerSelectionError(f"bad layer group {text!r}: {m.group(1)} runs from 1 to {parts}")
        if n_layers < parts:
            raise LayerSelectionError(f"layer group {text!r} needs at least {parts} layers, the model has {n_layers}")
        return layer_groups(n_layers, parts)[k - 1]
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        r = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
        if r:
            a, b = int(r.group(1)), int(r.group(2))
            if b < a:
                raise LayerSelectionError(f"bad layer range {part!r}: end before start")
            layers.extend(range(a, b + 1))
        elif re.fullmatch(r"-?\d+", part):
            layers.append(int(part))
        else:
            raise LayerSelectionError(
                f"bad layer selection {text!r}; use all, an index, a range 2-5, a list 1,4,7, "
                "half1/half2, quarter1..quarter4, eighth1..eighth8"
            )
    return layers


def layer_window(centre: int, window: int, n_layers: int) -> list[int]:
    """The ``window`` layers centred on ``centre`` (cut at the model's ends), as Geva et al.'s knockouts use."""
    half = window // 2
    lo, hi = max(0, centre - half), min(n_layers, centre - half + window)
    return list(range(lo, hi))
