"""``configs``: configurations written out one by one in a recipe (PRE, SFT, hand-made grafts)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from graftlens.methods.core.grafting import GraftingMethod
from graftlens.methods.core.parts import GraftSpec, RunConfig, Strict
from graftlens.methods.core.registry import register


class ConfigSpec(Strict):
    """One configuration: ``model`` (default: the recipe's recipient) with ``grafts`` applied,
    drawn in the report's ``panel``."""

    renamed: ClassVar[dict[str, str]] = {"group": "panel"}

    name: str = Field(min_length=1)
    """the configuration's name, in the store and the report"""
    model: str | None = None
    """the model run (default: the recipe's recipient)"""
    grafts: list[GraftSpec] = []
    """graft rules applied to it (none: the model as it is)"""
    panel: str = "configs"
    """the report's figure it is drawn in"""


@register
class WrittenConfigs(GraftingMethod):
    """Written configurations; their figure is the default bar chart, plain ones are its reference lines."""

    kind = "configs"


def expand_written(configs: list[ConfigSpec], recipient: str) -> list[RunConfig]:
    """The configurations a recipe writes out under ``configs:``, in order."""
    return [
        RunConfig(name=c.name, panel=c.panel, model=c.model or recipient, grafts=tuple(c.grafts), kind=WrittenConfigs.kind)
        for c in configs
    ]
