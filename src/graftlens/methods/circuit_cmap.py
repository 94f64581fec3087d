"""``circuit_cmap``: cross-model activation patching of a circuit's head groups (Prakash et al.).

On the same prompt, the donor's outputs (``z``) of one group's heads, at that group's positions,
are written into the recipient: which step of the circuit does the donor (a finetune) do better?
One configuration per group, one for every group at once. Run it in both directions (finetune into
pretrained, pretrained into finetune) with two sweeps. A circuit_graft sweep in the same panel
(the donor's weights of the same heads) is drawn beside it: one figure, both views."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from graftlens.methods.core import resources
from graftlens.methods.core.activations import DonorActivations
from graftlens.methods.core.circuits import GROUPS, CircuitCmapSource, GroupName, load_circuit
from graftlens.methods.core.parts import RecipeError, RunConfig, Sweep, shared_fields
from graftlens.methods.core.registry import Execution, Method, register

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig


class CircuitCmapSpec(CircuitCmapSource):
    kind: Literal["circuit_cmap"] = "circuit_cmap"
    head_groups: list[GroupName] = Field(min_length=1)


class CircuitCmapSweep(CircuitCmapSource, Sweep):
    """Patch the donor's heads of each group (and of all groups together) into the recipient."""

    kind: Literal["circuit_cmap"]
    renamed: ClassVar[dict[str, str]] = {"groups": "head_groups"}

    head_groups: list[GroupName] = Field(list(GROUPS), min_length=1)
    """the circuit's head groups, each patched alone (and all together)"""
    panel: str = "circuit CMAP"
    """the report's figure its configurations are drawn in"""


@register
class CircuitCrossModelPatching(Method[CircuitCmapSpec]):
    """Bars: accuracy with each group patched from the donor; the plain models as reference lines."""

    kind = "circuit_cmap"
    sweep = CircuitCmapSweep

    def expand(
        self, sweep: CircuitCmapSweep, recipient: str, n_layers: int | None, n_heads: int | None = None
    ) -> list[RunConfig]:
        sets = [[g] for g in sweep.head_groups] + ([list(sweep.head_groups)] if len(sweep.head_groups) > 1 else [])
        out = []
        for groups in sets:
            label = "all groups" if len(groups) > 1 else groups[0].replace("_", " ")
            spec = CircuitCmapSpec(head_groups=groups, **shared_fields(sweep, CircuitCmapSource))
            name = f"{label} from {sweep.donor} into {recipient}"
            out.append(
                RunConfig(
                    name=name,
                    panel=sweep.panel,
                    model=recipient,
                    coords={"groups": label, "donor": sweep.donor},
                    method=spec,
                    kind=self.kind,
                )
            )
        return out

    def check(self, config: RunConfig[CircuitCmapSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        from graftlens.interventions.patching import check_same_shapes

        check_same_shapes(models[config.model], models[spec.donor])
        a = models[config.model].adapter
        circuit = load_circuit(spec.circuit)
        circuit.check(a.n_layers, a.n_heads)
        if not any(circuit.group(g).heads for g in spec.head_groups):
            raise RecipeError(f"circuit {spec.circuit}: the groups {spec.head_groups} have no heads")
        return [circuit.group(g).positions for g in spec.head_groups]  # each group patched at the file's positions

    def readout(self, config: RunConfig[CircuitCmapSpec], execution: Execution) -> LastLogits:
        spec = config.method
        from graftlens.interventions.patches import Patch
        from graftlens.interventions.patching import patched_logits
        from graftlens.interventions.points import Point

        recipient, donor = execution.models[config.model], execution.models[spec.donor]
        circuit = load_circuit(spec.circuit)
        per_point: list[tuple[Point, str, tuple[int, ...]]] = []
        for g in spec.head_groups:
            group = circuit.group(g)
            layers = sorted({layer for layer, _ in group.heads})
            for layer in layers:
                heads = tuple(h for la, h in group.heads if la == layer)
                per_point.append((Point("z", layer), group.positions, heads))
        if not per_point:
            raise RecipeError(f"configuration {config.name!r}: the groups {spec.head_groups} have no heads")
        points = sorted({p for p, _, _ in per_point})
        donor_activations: DonorActivations = execution.state(resources.DonorActivationsStore(), DonorActivations)

        def run(batch: Prompts) -> torch.Tensor:
            cache = donor_activations.get(spec.donor, donor, batch, points)
            patches = [Patch(p, cache[p], positions, heads) for p, positions, heads in per_point]
            return patched_logits(recipient, batch.input_ids, batch.attention_mask, patches, True, batch.spans)[:, -1]

        return run

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        """The default bars per test template; a panel that also holds circuit_graft
        configurations is drawn by `circuit_views_figure` instead."""
        if any(c.kind == "circuit_graft" for c in configs):
            return circuit_views_figure(run, panel, configs)
        return super().figure(run, panel, configs)


ACTIVATIONS_VIEW = "activations (z)"


def circuit_views_figure(run: RunData, panel: str, configs: list[StoredConfig]):
    """One group of bars per head group (and all groups), one bar per view: the donor's head
    outputs patched in (circuit_cmap) and the donor's head weights grafted (circuit_graft, one
    bar per grafted parts); the plain models as reference lines. Each bar is the metric over every
    prompt with its 95% bootstrap interval."""
    from graftlens import charts
    from graftlens.methods.core.figures import metric_label
    from graftlens.results.metrics import estimate

    by_config = run.by_config
    shown = [c for c in configs if not c.plain and c.name in by_config]
    references = {
        c.name: estimate(by_config[c.name], run.metric, run.n_boot, run.seed)
        for c in run.reference_configs()
        if c.name in by_config
    }
    groups = list(dict.fromkeys(c.coords["groups"] for c in shown))
    views = list(dict.fromkeys(c.coords.get("view", ACTIVATIONS_VIEW) for c in shown))
    values = {
        (c.coords["groups"], c.coords.get("view", ACTIVATIONS_VIEW)): estimate(
            by_config[c.name], run.metric, run.n_boot, run.seed
        )
        for c in shown
    }
    donors = ", ".join(dict.fromkeys(c.coords["donor"] for c in shown))
    title = f"{run.name}: {panel}, heads' activations and weights from {donors} ({metric_label(run.metric)}, 95% CI)"
    return charts.bar_chart(title, groups, views, values, references, run.metric, "from the donor / reference"), title
