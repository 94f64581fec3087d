"""What every part of a recipe shares: strict frozen models and the checks of canonical names."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from graftlens.errors import GraftlensError
from graftlens.graft.positions import parse_positions
from graftlens.models.names import expand_components

LayerSpec = int | str | list[int]


class RecipeError(GraftlensError):
    """A recipe cannot be found or does not fit the models it runs on."""


class Strict(BaseModel):
    """Unknown keys are errors; parsed recipes are immutable (and hashable into a run id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_components(value: str | list[str]) -> str | list[str]:
    try:
        expand_components(value)
    except GraftlensError as exc:  # pydantic reports ValueErrors with the key they belong to
        raise ValueError(str(exc)) from None
    return value


def check_positions(value: str) -> str:
    try:
        parse_positions(value)
    except GraftlensError as exc:
        raise ValueError(str(exc)) from None
    return value


def check_position_list(values: list[str]) -> list[str]:
    for v in values:
        check_positions(v)
    return values


def layers_label(layers: LayerSpec) -> str:
    return ",".join(map(str, layers)) if isinstance(layers, list) else str(layers)
