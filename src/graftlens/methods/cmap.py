"""``cmap``: cross-model activation patching (Prakash et al.): write the donor's per-head
activations (``z``, ``q``, ``k``, ``v``) of some layers and positions into the recipient, on the
same prompts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from graftlens.interventions.points import HEAD_POINTS, Point
from graftlens.methods.core import resources
from graftlens.methods.core.activations import DonorActivations
from graftlens.methods.core.figures import heatmap_of
from graftlens.methods.core.parts import (
    Fits,
    LayerSpec,
    RecipeError,
    RunConfig,
    Strict,
    Sweep,
    check_position_list,
    check_positions,
    layers_label,
)
from graftlens.methods.core.registry import Execution, Method, register
from graftlens.models.names import select_layers

if TYPE_CHECKING:  # imported where they run: a method module loads without torch (recipes are read with it)
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel

HeadPoint = Literal["z", "q", "k", "v"]
assert set(HeadPoint.__args__) == set(HEAD_POINTS)  # type: ignore[attr-defined]


class CmapSpec(Strict):
    kind: Literal["cmap"] = "cmap"
    donor: str
    points: list[HeadPoint] = Field(["z"], min_length=1)
    layers: Annotated[LayerSpec, Fits("selection")] = "all"
    heads: list[int] | None = None  # None: every head
    positions: str = "all"

    _positions = field_validator("positions")(check_positions)


class CmapSweep(Sweep):
    """Patch the donor's ``points`` of each layer group at each position set into the recipient."""

    kind: Literal["cmap"]
    donor: str
    """the model whose activations are written in"""
    points: list[list[HeadPoint]] = Field([["z"]], min_length=1)
    """groups of per-head points patched together (`[[z], [q, k, v]]`)"""
    layers: Annotated[list[LayerSpec], Fits("selections")] = Field(["all"], min_length=1)
    """layer groups: one configuration per (points, layers, positions)"""
    positions: list[str] = Field(["all"], min_length=1)
    """where the activations are written, each a position selector (`FE`, `LT`, `subject`, `(FE+LT)^C`, ...)"""
    heads: Annotated[list[int] | None, Fits("head")] = None
    """the heads patched (default: every head)"""
    panel: str = "cmap"
    """the report's figure its configurations are drawn in"""

    _positions = field_validator("positions")(check_position_list)


@register
class CrossModelPatching(Method[CmapSpec]):
    """A heat map: patched points × (layers @ positions)."""

    kind = "cmap"
    sweep = CmapSweep

    def expand(self, sweep: CmapSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        out = []
        for points in sweep.points:
            for layers in sweep.layers:
                for positions in sweep.positions:
                    label = "+".join(points)
                    spec = CmapSpec(donor=sweep.donor, points=points, layers=layers, heads=sweep.heads, positions=positions)
                    coords = {"points": label, "layers": layers_label(layers), "positions": positions}
                    name = f"cmap {label} @ {layers_label(layers)} @ {positions}"
                    out.append(
                        RunConfig(name=name, panel=sweep.panel, model=recipient, coords=coords, method=spec, kind=self.kind)
                    )
        return out

    def check(self, config: RunConfig[CmapSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        from graftlens.interventions.patching import check_same_shapes

        adapter = models[config.model].adapter
        check_same_shapes(models[config.model], models[spec.donor])
        select_layers(spec.layers, adapter.n_layers)
        n_heads = {"q": adapter.n_heads, "z": adapter.n_heads}
        for point in spec.points:
            bad = [h for h in spec.heads or [] if not 0 <= h < n_heads.get(point, adapter.n_kv_heads)]
            if bad:
                raise RecipeError(f"heads {bad} out of range for {point!r}")
        return [spec.positions]

    def readout(self, config: RunConfig[CmapSpec], execution: Execution) -> LastLogits:
        recipient, spec = execution.models[config.model], config.method
        from graftlens.interventions.patches import Patch
        from graftlens.interventions.patching import check_same_shapes

        donor = execution.models[spec.donor]
        check_same_shapes(recipient, donor)
        donor_activations: DonorActivations = execution.state(resources.DonorActivationsStore(), DonorActivations)
        layers = select_layers(spec.layers, recipient.adapter.n_layers)
        points = [Point(name, layer) for name in spec.points for layer in layers]

        def run(batch: Prompts) -> torch.Tensor:
            cache = donor_activations.get(spec.donor, donor, batch, points)
            # The recipient model's run is continued from the lowest patched layer and first patched column.
            patches = [Patch(p, cache[p], spec.positions, None if spec.heads is None else tuple(spec.heads)) for p in points]
            return execution.plain_run(config.model, batch).patched(patches, batch.spans)

        return run

    def figure(self, run, panel, configs):
        return heatmap_of(
            run,
            panel,
            configs,
            ("layers", "positions"),
            "patched layers @ positions",
            row_key="points",
            ylabel="patched from the donor",
        )
