"""``extraction``: what attribute extraction depends on (Geva et al.). Extraction events (an
attention or MLP output at the last position whose projection's top-1 token is the answer) in
the plain model, and with one of the two earlier steps taken away:

- ``no_enrichment``: the early MLPs' updates cancelled at the subject positions;
- ``no_relation``: the last position may not attend to the relation positions in the layers
  before extraction (attention knockout).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field, field_validator

from graftlens.methods.core import resources
from graftlens.methods.core.figures import curves
from graftlens.methods.core.lenses import LensChoice, lens_of, read_through
from graftlens.methods.core.parts import (
    Fits,
    LayerSpec,
    RunConfig,
    Sweep,
    check_positions,
    layers_label,
    shared_fields,
    sweep_layers,
)
from graftlens.methods.core.registry import Execution, Method, Table, register
from graftlens.results.metrics import Estimate, bootstrap_ci, estimate

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig

Condition = Literal["none", "no_enrichment", "no_relation"]
ExtractionPoint = Literal["attn_out", "mlp_out"]
CONDITION_LABELS = {
    "none": "plain",
    "no_enrichment": "early MLPs cancelled at the subject",
    "no_relation": "last ↛ relation",
}
POINT_LABELS = {"attn_out": "attention", "mlp_out": "MLP"}


class ExtractionPositions(LensChoice):
    """What an extraction sweep and each of its configurations share: the positions it reads and
    cancels at, and the lens that reads the sublayer outputs."""

    position: str = "LT"
    """where the sublayer outputs are read: a position selector (`FE`, `LT`, `subject`, `(FE+LT)^C`, ...)"""
    subject: str = "subject"
    """the subject's positions"""
    relation: str = "(subject+LT)^C"
    """the relation's positions: what the last position may not attend to under `no_relation`"""

    _positions = field_validator("position", "subject", "relation")(check_positions)


class ExtractionSpec(ExtractionPositions):
    kind: Literal["extraction"] = "extraction"
    point: ExtractionPoint
    layer: int
    condition: Condition = "none"
    enrichment_layers: list[int] = []
    relation_layers: list[int] = []

    def intervention(self) -> tuple:
        """What the forward pass depends on (every point and layer of a condition shares it)."""
        return (
            self.condition,
            self.position,
            self.subject,
            self.relation,
            tuple(self.enrichment_layers),
            tuple(self.relation_layers),
        )


class ExtractionSweep(ExtractionPositions, Sweep):
    """For each condition, point and layer: is the point's top-1 token at ``position`` the answer?"""

    kind: Literal["extraction"]
    points: list[ExtractionPoint] = Field(["attn_out", "mlp_out"], min_length=1)
    """sublayer outputs read: `attn_out`, `mlp_out`"""
    conditions: list[Condition] = Field(["none", "no_enrichment", "no_relation"], min_length=1)
    """`none`, `no_enrichment` (early MLPs cancelled at the subject), `no_relation` (attention to the relation blocked)"""
    enrichment_layers: Annotated[LayerSpec, Fits("selection")] = "quarter1"
    """the early MLPs `no_enrichment` cancels"""
    relation_layers: Annotated[LayerSpec, Fits("selection")] = "half1"
    """the layers `no_relation` blocks attention in"""
    panel: str = "extraction"
    """the report's figure its configurations are drawn in"""


@register
class Extraction(Method[ExtractionSpec]):
    kind = "extraction"
    sweep = ExtractionSweep
    needs_depth = True

    def expand(self, sweep: ExtractionSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        assert n_layers is not None
        enrichment = sweep_layers(sweep, "enrichment_layers", n_layers)
        relation = sweep_layers(sweep, "relation_layers", n_layers)
        out = []
        lens = " (tuned lens)" if sweep.lens == "tuned" else ""
        for condition in sweep.conditions:  # condition first: its points and layers share one pass
            for point in sweep.points:
                for layer in range(n_layers):
                    spec = ExtractionSpec(
                        point=point,
                        layer=layer,
                        condition=condition,
                        **shared_fields(sweep, ExtractionPositions),
                        enrichment_layers=enrichment if condition == "no_enrichment" else [],
                        relation_layers=relation if condition == "no_relation" else [],
                    )
                    where = {
                        "none": "",
                        "no_enrichment": f" | MLP L{layers_label(sweep.enrichment_layers)} cancelled @ {sweep.subject}",
                        "no_relation": f" | {sweep.position} ↛ {sweep.relation} @ L{layers_label(sweep.relation_layers)}",
                    }[condition]
                    out.append(
                        RunConfig(
                            name=f"extraction {point} @ {sweep.position} @ L{layer}{where}{lens}",
                            panel=f"{sweep.panel}: {POINT_LABELS[point]}",
                            model=recipient,
                            coords={"condition": condition, "point": point, "layer": str(layer)},
                            method=spec,
                            kind=self.kind,
                        )
                    )
        return out

    def check(self, config: RunConfig[ExtractionSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        return [spec.position, spec.subject, spec.relation]

    def readout(self, config: RunConfig[ExtractionSpec], execution: Execution) -> LastLogits:
        model, spec = execution.models[config.model], config.method

        def forward(batch: Prompts) -> dict[str, torch.Tensor]:
            """Every layer's attention and MLP output at ``position`` under the condition: name → ``[batch, d_model]``."""

            from graftlens.interventions.hooks import capture
            from graftlens.interventions.knockout import attention_knockout
            from graftlens.interventions.lens import at_last_picked
            from graftlens.interventions.sublayers import cancel_sublayers
            from graftlens.models.run import run_logits

            if spec.condition == "no_enrichment":
                condition = cancel_sublayers(model, "mlp", spec.enrichment_layers, spec.subject, spans=batch.spans)
            elif spec.condition == "no_relation":
                condition = attention_knockout(
                    model, spec.relation_layers, sources=spec.relation, targets=spec.position, spans=batch.spans
                )
            else:
                condition = nullcontext()
            points = [f"{p}.{layer}" for p in ("attn_out", "mlp_out") for layer in range(model.adapter.n_layers)]
            with condition, capture(model, points) as cache:
                run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)
            return {p: at_last_picked(cache[p], spec.position, batch.attention_mask, batch.spans) for p in points}

        lens = lens_of(execution, config.model, spec.lens)

        def run(batch: Prompts) -> torch.Tensor:
            point = f"{spec.point}.{spec.layer}"
            outputs = execution.for_batch(resources.ExtractionOutputs(), batch, lambda: forward(batch), spec.intervention())
            return read_through(model, outputs[point], point, lens)

        return run

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        by_config = run.by_config
        values = {
            (CONDITION_LABELS[c.coords["condition"]], c.coords["layer"]): estimate(
                by_config[c.name], "top1", run.n_boot, run.seed
            )
            for c in configs
            if c.name in by_config
        }
        labelled = [_relabelled(c) for c in configs]
        layers, series = curves(labelled, "condition", values)
        what = panel.rsplit(": ", 1)[-1]
        title = f"{run.name}: extraction events of {what} outputs at the last position (top-1 = the answer), 95% CI"
        top = max((e.hi for s in series.values() for e in s if e is not None and e.hi == e.hi), default=1.0)
        from graftlens import charts

        fig = charts.line_chart(
            title,
            layers,
            series,
            "extraction rate",
            "layer",
            ylim=(0.0, 1.05 if top >= 0.25 else max(0.05, 1.2 * top)),
            legend_title="condition",
        )
        return fig, title

    def tables(self, run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
        """Per condition: the share of facts with an extraction event in some layer, and the layer with the most."""
        rows: list[tuple[str, list[Estimate | int | str | None]]] = []
        for condition in dict.fromkeys(c.coords["condition"] for c in configs):
            mine = [c for c in configs if c.coords["condition"] == condition]
            rows.append((CONDITION_LABELS[condition], _any_layer(run, mine)))
        what = panel.rsplit(": ", 1)[-1]
        return [
            Table(
                f"{panel}: facts with an extraction event by {what} in some layer",
                "condition",
                ["share of facts", "most events (layer)"],
                rows,
            )
        ]


def _relabelled(config: StoredConfig) -> StoredConfig:

    return replace(config, coords={**config.coords, "condition": CONDITION_LABELS[config.coords["condition"]]})


def _any_layer(run: RunData, configs: list[StoredConfig]) -> list[Estimate | int | str | None]:
    """``[share of facts with an event in some layer (95% CI), "rate (layer)" of the busiest layer]``."""
    by_config = run.by_config
    events: dict[str, bool] = {}
    busiest: tuple[float, str] = (-1.0, "")
    for c in configs:
        rows = by_config.get(c.name, [])
        for r in rows:
            events[r.example] = events.get(r.example, False) or r.hit(1)
        if rows:
            rate = float(np.mean([r.hit(1) for r in rows]))
            busiest = max(busiest, (rate, c.coords["layer"]), key=lambda b: b[0])
    if not events:
        return [None, None]
    values = np.array([float(v) for v in events.values()])
    lo, hi = bootstrap_ci(values, run.n_boot, run.seed)
    return [Estimate(float(values.mean()), lo, hi), f"{busiest[0]:.2f} (L{busiest[1]})"]
