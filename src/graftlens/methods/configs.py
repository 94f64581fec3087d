"""``configs``: configurations written out one by one in a recipe (PRE, SFT, hand-made grafts)."""

from __future__ import annotations

from pydantic import Field

from graftlens.methods.base import GraftSpec, RunConfig, Strict
from graftlens.methods.grafting import GraftingMethod
from graftlens.methods.registry import register


class ConfigSpec(Strict):
    """One configuration: ``model`` (default: the recipe's recipient) with ``grafts`` applied."""

    name: str = Field(min_length=1)
    model: str | None = None
    grafts: list[GraftSpec] = []
    group: str = "configs"


@register
class WrittenConfigs(GraftingMethod):
    """Written configurations; their figure is the default bar chart, plain ones are its reference lines."""

    kind = "configs"

    def expand_written(self, configs: list[ConfigSpec], recipient: str) -> list[RunConfig]:
        return [RunConfig(c.name, c.group, c.model or recipient, tuple(c.grafts), kind=self.kind) for c in configs]
