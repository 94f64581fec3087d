"""``knockout``: block attention edges from ``targets`` to a source set in a window of layers
centred on each layer (Geva et al.), scored as the change of the target's probability against a
plain ``baseline`` configuration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from graftlens.methods.core.figures import curves
from graftlens.methods.core.parts import Fits, RunConfig, Strict, Sweep, check_positions
from graftlens.methods.core.registry import Execution, Method, Table, register
from graftlens.models.names import layer_window
from graftlens.results.metrics import Estimate, relative_change

if TYPE_CHECKING:  # imported where they run: a method module loads without torch (recipes are read with it)
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig


class KnockoutSpec(Strict):
    kind: Literal["knockout"] = "knockout"
    sources: str
    targets: str = "LT"
    layers: list[int]

    _positions = field_validator("sources", "targets")(check_positions)


class KnockoutSweep(Sweep):
    """For each source set and each layer ℓ: block ``targets`` → source in the ``window`` layers around ℓ."""

    kind: Literal["knockout"]
    sources: dict[str, str] = Field(min_length=1)
    """label → the positions attended to that are blocked, a position selector (`FE`, `LT`, `subject`, `(FE+LT)^C`, ...)"""
    targets: str = "LT"
    """the positions whose attention is blocked"""
    window: Annotated[int, Fits("window")] = Field(9, ge=1)
    """layers knocked out together, around each layer"""
    baseline: str
    """a configuration without interventions, the denominator of the relative change"""
    panel: str = "knockout"
    """the report's figure its configurations are drawn in"""

    _targets = field_validator("targets")(check_positions)

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: dict[str, str]) -> dict[str, str]:
        for s in v.values():
            check_positions(s)
        return v

    def check_in_recipe(self, plain_configs: list[str]) -> None:
        if self.baseline not in plain_configs:
            raise ValueError(
                f"knockout sweep: baseline {self.baseline!r} must name a configuration without grafts "
                f"(written under 'configs'); plain configurations: {', '.join(plain_configs) or 'none'}"
            )


def knockout_table(run: RunData, configs: list[StoredConfig]) -> dict[tuple[str, str], Estimate]:
    """``(source, layer) → relative change (%)`` of the target probability against each knockout's baseline."""
    by_config = run.by_config
    out = {}
    for c in configs:
        k = c.coords
        if c.name in by_config and k["baseline"] in by_config:
            out[(k["source"], k["layer"])] = relative_change(by_config[c.name], by_config[k["baseline"]], run.n_boot, run.seed)
    return out


@register
class AttentionKnockout(Method[KnockoutSpec]):
    kind = "knockout"
    sweep = KnockoutSweep
    needs_depth = True

    def expand(self, sweep: KnockoutSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        assert n_layers is not None
        return [
            RunConfig(
                name=f"knockout {label} @ L{centre}",
                panel=sweep.panel,
                model=recipient,
                coords={"source": label, "layer": str(centre), "baseline": sweep.baseline},
                method=KnockoutSpec(sources=selector, targets=sweep.targets, layers=layer_window(centre, sweep.window, n_layers)),
                kind=self.kind,
            )
            for label, selector in sweep.sources.items()
            for centre in range(n_layers)
        ]

    def check(self, config: RunConfig[KnockoutSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        return [spec.sources, spec.targets]

    def readout(self, config: RunConfig[KnockoutSpec], execution: Execution) -> LastLogits:
        spec = config.method

        def run(batch: Prompts) -> torch.Tensor:
            # Only the layers from the window's first and the columns from the first target are computed.
            kept = execution.plain_run(config.model, batch)
            return kept.knocked_out(spec.layers, spec.sources, spec.targets, spans=batch.spans)

        return run

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        values = knockout_table(run, configs)
        layers, series = curves(configs, "source", values)
        windows = {len(c.method["layers"]) for c in configs if c.method}
        window = f", window of {max(windows)} layers" if windows else ""
        targets = next((c.method["targets"] for c in configs if c.method), "LT")
        title = f"{run.name}: {panel} — attention edges {targets} → source blocked{window} (95% CI)"
        from graftlens import charts

        fig = charts.line_chart(
            title,
            layers,
            series,
            "change in target probability (%)",
            "centre layer of the window",
            zero_line=True,
            legend_title="blocked source",
        )
        return fig, title

    def tables(self, run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
        """Per-layer relative change (%) of each knockout source, with 95% CIs."""
        values = knockout_table(run, configs)
        sources = list(dict.fromkeys(c.coords["source"] for c in configs))
        layers = list(dict.fromkeys(c.coords["layer"] for c in configs))
        baseline = configs[0].coords["baseline"]
        rows = [(layer, [values.get((s, layer)) for s in sources]) for layer in layers]
        return [Table(f"{panel}: change in target probability (%) against {baseline}", "centre layer", sources, rows, 1)]
