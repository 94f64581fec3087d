"""``lens``: project a stream point of each layer, at one position per prompt, to the vocabulary
(Geva et al.'s extraction events and attribute rate)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from graftlens.methods.core.figures import metric_label
from graftlens.methods.core.lenses import LensChoice, lens_of
from graftlens.methods.core.parts import RunConfig, Sweep, check_positions, shared_fields
from graftlens.methods.core.registry import Execution, Method, register
from graftlens.results.metrics import estimate

if TYPE_CHECKING:  # imported where they run: a method module loads without torch (recipes are read with it)
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig

StreamPoint = Literal["resid_pre", "resid_post", "attn_out", "mlp_out"]


class LensRead(LensChoice):
    """What a lens sweep and each of its configurations share: where and how the stream is read
    (``lens: tuned`` reads it through the model's tuned lens)."""

    position: str = "LT"
    """each prompt is read at the last position this selector picks"""
    final_norm: bool = True
    """apply the final norm before the unembedding"""

    _position = field_validator("position")(check_positions)

    @model_validator(mode="after")
    def _tuned_reads_through_the_norm(self):
        if self.lens == "tuned" and not self.final_norm:
            raise ValueError("lens: tuned reads through the final norm (it was trained so): drop final_norm: false")
        return self


class LensSpec(LensRead):
    kind: Literal["lens"] = "lens"
    point: StreamPoint
    layer: int


class LensSweep(LensRead, Sweep):
    """For each point and each layer: project the point at ``position`` to the vocabulary."""

    kind: Literal["lens"]
    points: list[StreamPoint] = Field(["attn_out", "mlp_out"], min_length=1)
    """stream points read: `attn_out`, `mlp_out`, `resid_post`, ..."""
    panel: str = "lens"
    """the report's figure its configurations are drawn in"""


@register
class VocabularyProjection(Method[LensSpec]):
    kind = "lens"
    sweep = LensSweep
    needs_depth = True

    def expand(self, sweep: LensSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        assert n_layers is not None
        return [
            RunConfig(
                name=f"lens {point} @ {sweep.position} @ L{layer}{' (tuned lens)' if sweep.lens == 'tuned' else ''}",
                panel=sweep.panel,
                model=recipient,
                coords={"point": point, "layer": str(layer), **({"lens": "tuned"} if sweep.lens == "tuned" else {})},
                method=LensSpec(point=point, layer=layer, **shared_fields(sweep, LensRead)),
                kind=self.kind,
            )
            for point in sweep.points
            for layer in range(n_layers)
        ]

    def check(self, config: RunConfig[LensSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        return [config.method.position]

    def readout(self, config: RunConfig[LensSpec], execution: Execution) -> LastLogits:
        model, spec = execution.models[config.model], config.method
        point = f"{spec.point}.{spec.layer}"
        from graftlens.interventions.lens import point_logits

        lens = lens_of(execution, config.model, spec.lens)

        def run(batch: Prompts) -> torch.Tensor:
            return point_logits(
                model,
                batch.input_ids,
                batch.attention_mask,
                [point],
                spec.position,
                spec.final_norm,
                spans=batch.spans,
                lens=lens,
            )[point]

        return run

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        by_config = run.by_config

        def label(c: StoredConfig) -> str:  # a point read through the tuned lens is a curve of its own
            return c.coords["point"] + (", tuned lens" if c.coords.get("lens") == "tuned" else "")

        values = {
            (label(c), c.coords["layer"]): estimate(by_config[c.name], run.metric, run.n_boot, run.seed)
            for c in configs
            if c.name in by_config
        }
        layers = list(dict.fromkeys(c.coords["layer"] for c in configs))
        series = {lab: [values.get((lab, layer)) for layer in layers] for lab in dict.fromkeys(map(label, configs))}
        label = metric_label(run.metric)
        attributes = run.metric == "attribute_rate"
        what = "the subject's attributes in the top 50" if attributes else f"target in the projection ({label})"
        title = f"{run.name}: {panel} — {what}, 95% CI"
        top = max((e.hi for e in values.values() if e.hi == e.hi), default=1.0)
        # A 0–1 axis unless every rate is small: then the axis is stretched (its ticks say so).
        ylim = None if run.metric == "mean_rank" else (0.0, 1.05 if top >= 0.25 else max(0.05, 1.2 * top))
        from graftlens import charts

        fig = charts.line_chart(title, layers, series, f"{label} of the projection", "layer", ylim=ylim, legend_title="projected")
        return fig, title
