"""``enrichment``: what builds the subject representation (Geva et al.). Cancel the MLP (or the
attention) updates of a window of consecutive layers at every position up to and including the
subject's last token, and read the subject's last-token representation at a later layer through
the vocabulary (its attribute rate, under ``eval.metric: attribute_rate``); beside it, what the
model then predicts at the last position."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from graftlens.methods.core import resources
from graftlens.methods.core.figures import metric_label
from graftlens.methods.core.lenses import LensChoice, lens_of, read_through
from graftlens.methods.core.parts import Fits, RecipeError, RunConfig, Sweep, check_positions
from graftlens.methods.core.registry import Execution, Method, Table, register
from graftlens.results.metrics import Estimate, estimate

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig

SublayerName = Literal["mlp", "attn"]
MEANS_FILE = "sublayer-means.safetensors"


class EnrichmentSpec(LensChoice):
    kind: Literal["enrichment"] = "enrichment"
    sublayer: SublayerName | None  # None: nothing cancelled (the reference)
    layers: list[int] = []
    positions: str = "subject"
    ablation: Literal["zero", "mean"] = "zero"
    read_layer: int
    read: Literal["subject", "last"] = "subject"

    _positions = field_validator("positions")(check_positions)

    def cancellation(self) -> tuple:
        """What the forward pass depends on (the two readouts of one cancellation share it)."""
        return (self.sublayer, tuple(self.layers), self.positions, self.ablation, self.read_layer)


class EnrichmentSweep(LensChoice, Sweep):
    """For each sublayer and each window start ℓ ≤ ``read_layer``: cancel that sublayer in layers
    ℓ..ℓ+window−1 at every position up to the last one ``positions`` picks; read the
    representation there after ``read_layer`` (and, with ``answer``, the last position's prediction).
    ``lens: tuned`` reads the representation through the model's tuned lens."""

    kind: Literal["enrichment"]
    sublayers: list[SublayerName] = Field(["mlp", "attn"], min_length=1)
    """which sublayers are cancelled: `mlp`, `attn`"""
    window: Annotated[int, Fits("window")] = Field(5, ge=1)
    """layers cancelled together, from each start"""
    read_layer: Annotated[int, Fits("layer")] = -1
    """the layer after which the representation is read (negative: from the last layer)"""
    positions: str = "subject"
    """cancel up to the last position this picks, and read there: a position selector (`FE`, `LT`, `subject`, `(FE+LT)^C`, ...)"""
    ablation: Literal["zero", "mean"] = "zero"
    """`zero` (Geva et al.) or `mean` (the mean output over the prompts)"""
    answer: bool = True
    """also read the last position's prediction"""
    panel: str = "sublayers cancelled"
    """the report's figure its configurations are drawn in"""

    _positions = field_validator("positions")(check_positions)

    def read_layer_of(self, n_layers: int) -> int:
        layer = self.read_layer + n_layers if self.read_layer < 0 else self.read_layer
        if not 0 <= layer < n_layers:
            raise RecipeError(
                f"enrichment sweep: read_layer {self.read_layer} out of range (the model has layers 0..{n_layers - 1})"
            )
        if self.window > n_layers:
            raise RecipeError(f"enrichment sweep: a window of {self.window} layers is wider than the model ({n_layers} layers)")
        return layer


def _lens_suffix(lens: str) -> str:
    return " (tuned lens)" if lens == "tuned" else ""


def _answer_group(panel: str) -> str:
    return f"{panel}: the last position's prediction"


@register
class Enrichment(Method[EnrichmentSpec]):
    kind = "enrichment"
    sweep = EnrichmentSweep
    needs_depth = True

    def expand(self, sweep: EnrichmentSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        assert n_layers is not None
        read_layer = sweep.read_layer_of(n_layers)
        reads = ["subject", "last"] if sweep.answer else ["subject"]
        groups = {"subject": sweep.panel, "last": _answer_group(sweep.panel)}

        def config(sublayer: str | None, start: int | None) -> list[RunConfig]:
            layers = [] if start is None else list(range(start, min(n_layers, start + sweep.window)))
            what = "nothing cancelled" if start is None else f"{sublayer} L{layers[0]}-{layers[-1]} cancelled"
            return [
                RunConfig(
                    name=f"enrichment {what} @ {sweep.positions} → L{read_layer} {read}{_lens_suffix(sweep.lens)}",
                    panel=groups[read],
                    model=recipient,
                    coords={"sublayer": sublayer or "none", "layer": "" if start is None else str(start), "read": read},
                    method=EnrichmentSpec(
                        sublayer=sublayer,
                        layers=layers,
                        positions=sweep.positions,
                        ablation=sweep.ablation,  # type: ignore[arg-type]
                        read_layer=read_layer,
                        read=read,
                        lens=sweep.lens,
                    ),
                    kind=self.kind,
                )
                for read in reads  # next to each other: both readouts of a cancellation share one pass
            ]

        out = config(None, None)
        for sublayer in sweep.sublayers:
            for start in range(read_layer + 1):
                out += config(sublayer, start)
        return out

    def check(self, config: RunConfig[EnrichmentSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        return [config.method.positions]

    def readout(self, config: RunConfig[EnrichmentSpec], execution: Execution) -> LastLogits:
        model, spec = execution.models[config.model], config.method

        def forward(batch: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
            """``(hidden[batch, d_model] after the read layer at the subject's last token, logits[batch, vocab] at LT)``."""
            from graftlens.interventions.hooks import capture
            from graftlens.interventions.lens import at_last_picked
            from graftlens.interventions.sublayers import cancel_sublayers
            from graftlens.models.run import run_logits

            means = None if spec.ablation == "zero" or spec.sublayer is None else _means(execution, config.model, model, spec)
            point = f"resid_post.{spec.read_layer}"
            with (
                cancel_sublayers(
                    model, spec.sublayer or "mlp", spec.layers, spec.positions, through=True, spans=batch.spans, means=means
                ),
                capture(model, [point]) as cache,
            ):
                logits = run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)[:, -1]
            return at_last_picked(cache[point], spec.positions, batch.attention_mask, batch.spans), logits

        lens = lens_of(execution, config.model, spec.lens)

        def run(batch: Prompts) -> torch.Tensor:
            hidden, logits = execution.for_batch(resources.EnrichmentReads(), batch, lambda: forward(batch), spec.cancellation())
            if spec.read == "last":
                return logits
            return read_through(model, hidden, f"resid_post.{spec.read_layer}", lens)

        return run

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        subject = any(c.coords.get("read") == "subject" for c in configs)
        metric = run.metric if subject else "top1"
        layers, series = _curves(run, configs, metric)
        if not layers:
            return None
        spec = next(c.method for c in configs if c.method and c.method.get("sublayer"))
        window = len(spec["layers"])
        what = (
            f"{metric_label(metric)} at {spec['positions']}'s last token after L{spec['read_layer']}"
            if subject
            else (f"{metric_label(metric)} of the answer at the last position")
        )
        ablated = "mean-ablated" if spec["ablation"] == "mean" else "cancelled"
        title = f"{run.name}: {panel} — {what}, sublayers {ablated} in {window} layers from ℓ up to {spec['positions']} (95% CI)"
        top = max((e.hi for s in series.values() for e in s if e is not None and e.hi == e.hi), default=1.0)
        ylim = (0.0, 1.05 if top >= 0.25 else max(0.02, 1.2 * top))
        from graftlens import charts

        fig = charts.line_chart(
            title, layers, series, metric_label(metric), "first layer of the window (ℓ)", ylim=ylim, legend_title="cancelled"
        )
        return fig, title

    def tables(self, run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
        """The rate with nothing cancelled, and the lowest each sublayer's windows bring it to."""
        subject = any(c.coords.get("read") == "subject" for c in configs)
        metric = run.metric if subject else "top1"
        by_config = run.by_config
        rows: list[tuple[str, list[Estimate | int | str | None]]] = []
        for c in configs:
            if c.coords["sublayer"] == "none" and c.name in by_config:
                rows.append(("nothing", [estimate(by_config[c.name], metric, run.n_boot, run.seed), "", ""]))
        for sublayer in dict.fromkeys(c.coords["sublayer"] for c in configs if c.coords["sublayer"] != "none"):
            found = [
                (estimate(by_config[c.name], metric, run.n_boot, run.seed), c)
                for c in configs
                if c.coords["sublayer"] == sublayer and c.name in by_config
            ]
            if found:
                low, c = min(found, key=lambda f: f[0].value)
                layers = c.method["layers"] if c.method else []
                span = f"{layers[0]}–{layers[-1]}" if layers else ""
                rows.append((sublayer, [low, span, len(found)]))
        title = f"{panel}: {metric_label(metric)} with nothing cancelled, and the lowest a window brings it to"
        return [Table(title, "cancelled", ["rate", "window of the lowest", "windows"], rows)]


def _curves(run: RunData, configs: list[StoredConfig], metric: str) -> tuple[list[str], dict[str, list[Estimate | None]]]:
    """Window starts, and one series per sublayer (the reference, nothing cancelled, flat)."""
    by_config = run.by_config
    layers = list(dict.fromkeys(c.coords["layer"] for c in configs if c.coords["sublayer"] != "none"))
    series: dict[str, list[Estimate | None]] = {}
    for c in configs:
        if c.coords["sublayer"] == "none" and c.name in by_config:
            series["nothing"] = [estimate(by_config[c.name], metric, run.n_boot, run.seed)] * len(layers)
    for sublayer in dict.fromkeys(c.coords["sublayer"] for c in configs if c.coords["sublayer"] != "none"):
        values = {
            c.coords["layer"]: estimate(by_config[c.name], metric, run.n_boot, run.seed)
            for c in configs
            if c.coords["sublayer"] == sublayer and c.name in by_config
        }
        series[{"mlp": "MLP", "attn": "attention"}.get(sublayer, sublayer)] = [values.get(layer) for layer in layers]
    return layers, series


def _means(execution: Execution, model_name: str, model: LoadedModel, spec: EnrichmentSpec) -> dict[int, torch.Tensor]:
    """Each layer's mean sublayer output over the positions the cancellation touches, over every
    prompt of the run; made once per run and written beside the store (``sublayer-means.safetensors``)."""

    def make() -> dict[int, torch.Tensor]:
        from graftlens.interventions.sublayers import sublayer_means

        assert spec.sublayer is not None
        work = [(b.input_ids.to(model.device), b.attention_mask.to(model.device), b.spans) for b in execution.batches]
        means = sublayer_means(model, work, spec.sublayer, range(model.adapter.n_layers), spec.positions, through=True)
        if execution.keep is not None:  # {model}/{sublayer}/{layer} tensors
            tensors = {f"{model_name}/{spec.sublayer}/{layer}": m.contiguous() for layer, m in means.items()}
            execution.keep(MEANS_FILE, tensors, {"positions": spec.positions, "through": "last position picked"})
        return means

    return execution.state(resources.SublayerMeans(model_name, spec.sublayer, spec.positions), make)
