"""``circuit_cmap``: cross-model activation patching of a circuit's head groups (Prakash et al.).

On the same prompt, the donor's outputs (``z``) of one group's heads, at that group's positions,
are written into the recipient: which step of the circuit does the donor (a finetune) do better?
One configuration per group, one for every group at once. Run it in both directions (finetune into
pretrained, pretrained into finetune) with two sweeps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from graftlens.methods.cmap import DonorActivations
from graftlens.methods.core.circuits import GROUPS, load_circuit
from graftlens.methods.core.parts import RecipeError, RunConfig, Strict, Sweep, shared_fields
from graftlens.methods.core.registry import Execution, Method, register

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import PromptBatch
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel

GroupName = Literal["value_fetchers", "position_transmitters", "position_detectors", "structure_readers"]


class CircuitCmapSource(Strict):
    """What a circuit_cmap sweep and each of its configurations share: the donor and the circuit."""

    donor: str
    circuit: str  # "shipped:NAME" or a circuit.json an et-circuit report wrote


class CircuitCmapSpec(CircuitCmapSource):
    kind: Literal["circuit_cmap"] = "circuit_cmap"
    head_groups: list[GroupName] = Field(min_length=1)


class CircuitCmapSweep(CircuitCmapSource, Sweep):
    """Patch the donor's heads of each group (and of all groups together) into the recipient."""

    kind: Literal["circuit_cmap"]
    renamed: ClassVar[dict[str, str]] = {"group": "panel", "groups": "head_groups"}

    head_groups: list[GroupName] = Field(list(GROUPS), min_length=1)
    panel: str = "circuit CMAP"


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
        from graftlens.interventions.patching import Patch, patched_logits
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
        donor_activations: DonorActivations = execution.state("cmap", DonorActivations)

        def run(batch: PromptBatch) -> torch.Tensor:
            cache = donor_activations.get(spec.donor, donor, batch, points)
            patches = [Patch(p, cache[p], positions, heads) for p, positions, heads in per_point]
            return patched_logits(recipient, batch.input_ids, batch.attention_mask, patches, True, batch.spans)[:, -1]

        return run
