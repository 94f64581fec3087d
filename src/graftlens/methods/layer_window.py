"""``layer_window``: graft each component group in a window of layers centred on each layer."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from graftlens.methods.core.figures import heatmap_of
from graftlens.methods.core.grafting import ComponentListSweep, GraftingMethod
from graftlens.methods.core.parts import Fits, GraftSpec, RunConfig
from graftlens.methods.core.registry import register
from graftlens.models.names import layer_window


class LayerWindowSweep(ComponentListSweep):
    """Graft each component group in a window of ``window`` layers centred on each layer."""

    kind: Literal["layer_window"]
    window: Annotated[int, Fits("window")] = Field(1, ge=1)
    """layers grafted together, in a window centred on each layer"""
    panel: str = "layer_window"
    """the report's figure its configurations are drawn in"""


@register
class LayerWindowGrafting(GraftingMethod):
    """A heat map: component groups × the window's centre layer."""

    kind = "layer_window"
    sweep = LayerWindowSweep
    needs_depth = True

    def expand(
        self, sweep: LayerWindowSweep, recipient: str, n_layers: int | None, n_heads: int | None = None
    ) -> list[RunConfig]:
        assert n_layers is not None
        return [
            RunConfig(
                name=f"{comp} @ L{centre}",
                panel=sweep.panel,
                model=recipient,
                grafts=(
                    GraftSpec(
                        donor=sweep.donor,
                        components=comp,
                        layers=layer_window(centre, sweep.window, n_layers),
                        positions=sweep.positions,
                    ),
                ),
                coords={"component": comp, "layer": str(centre)},
                kind=self.kind,
            )
            for comp in sweep.components
            for centre in range(n_layers)
        ]

    def figure(self, run, panel, configs):
        return heatmap_of(run, panel, configs, ("layer",), "centre of the grafted layer window")
