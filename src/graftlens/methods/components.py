"""``components``: graft each component group in each layer group at fixed positions (Nief et al., Figure 3)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from graftlens.methods.core.figures import heatmap_of
from graftlens.methods.core.grafting import ComponentListSweep, GraftingMethod
from graftlens.methods.core.parts import Fits, GraftSpec, LayerSpec, RunConfig, layers_label
from graftlens.methods.core.registry import register


class ComponentSweep(ComponentListSweep):
    """Graft each component group in each layer group from ``donor`` at ``positions``."""

    kind: Literal["components"]
    layers: Annotated[list[LayerSpec], Fits("selections")] = Field(min_length=1)
    """layer groups, one configuration each (with each component)"""
    panel: str = "components"
    """the report's figure its configurations are drawn in"""


@register
class ComponentGrafting(GraftingMethod):
    """A heat map: component groups × layer groups."""

    kind = "components"
    sweep = ComponentSweep

    def expand(self, sweep: ComponentSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        return [
            RunConfig(
                name=f"{comp} @ {layers_label(layers)}",
                panel=sweep.panel,
                model=recipient,
                grafts=(GraftSpec(donor=sweep.donor, components=comp, layers=layers, positions=sweep.positions),),
                coords={"component": comp, "layers": layers_label(layers)},
                kind=self.kind,
            )
            for comp in sweep.components
            for layers in sweep.layers
        ]

    def figure(self, run, panel, configs):
        return heatmap_of(run, panel, configs, ("layers",), "grafted layers")
