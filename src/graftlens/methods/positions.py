"""``positions``: graft a donor's components at each of several position sets (Nief et al., Figure 2)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from graftlens.methods.core.grafting import GraftingMethod
from graftlens.methods.core.parts import Fits, GraftSpec, LayerSpec, RunConfig, Sweep, check_components, check_position_list
from graftlens.methods.core.registry import register


class PositionSweep(Sweep):
    """Graft ``components`` of ``layers`` from ``donor`` at each position set (one config each)."""

    kind: Literal["positions"]
    donor: str
    """the model whose weights are grafted"""
    sets: list[str] = Field(min_length=1)
    """position sets, one configuration each: a position selector (`FE`, `LT`, `subject`, `(FE+LT)^C`, ...)"""
    components: str | list[str] = "all"
    """components or groups grafted at each set"""
    layers: Annotated[LayerSpec, Fits("selection")] = "all"
    """the layers grafted"""
    panel: str = "positions"
    """the report's figure its configurations are drawn in"""
    label: str | None = None
    """configuration names become `label: set` (default: the set alone)"""

    _components = field_validator("components")(check_components)

    _sets = field_validator("sets")(check_position_list)


@register
class PositionGrafting(GraftingMethod):
    """One bar group per position set, beside the reference configurations."""

    kind = "positions"
    sweep = PositionSweep

    def expand(self, sweep: PositionSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        return [
            RunConfig(
                name=f"{sweep.label}: {s}" if sweep.label else s,
                panel=sweep.panel,
                model=recipient,
                grafts=(GraftSpec(donor=sweep.donor, components=sweep.components, layers=sweep.layers, positions=s),),
                coords={"positions": s},
                kind=self.kind,
            )
            for s in sweep.sets
        ]
