"""``circuit_graft``: weight-level cross-model patching of a circuit's head groups.

The weight view of what `circuit_cmap` asks with activations: the donor's
*weights* of one group's heads (their rows of q, k and v and their columns of o,
`HeadGraft`), at that group's positions, computed in the recipient. Where CMAP
hands the recipient the donor's head outputs, which carry everything upstream of them, a head graft
hands it only the heads' own weights, which read the recipient's residual stream: is what the
donor does better in those heads' weights, or in what they are given to read?

One configuration per group, one for every group at once (each group's heads at its own
positions; groups sharing a layer share its modules, position by position). Give it the panel of
a circuit_cmap sweep of the same donor and circuit to draw both views in one figure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from graftlens.methods.core.circuits import GROUPS, CircuitCmapSource, GroupName, load_circuit
from graftlens.methods.core.parts import RecipeError, RunConfig, Sweep, shared_fields
from graftlens.methods.core.registry import Execution, Method, register

if TYPE_CHECKING:
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel

HEAD_PARTS = ("q", "k", "v", "o")


def _check_parts(value: str) -> str:
    parts = value.split("+")
    bad = [p for p in parts if p not in HEAD_PARTS]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"parts {value!r}: a head's parts are q, k, v and o, joined by '+' (e.g. 'q+k+v+o', 'q')")
    return value


class CircuitGraftSpec(CircuitCmapSource):
    kind: Literal["circuit_graft"] = "circuit_graft"
    head_groups: list[GroupName] = Field(min_length=1)
    parts: str = "q+k+v+o"

    _parts = field_validator("parts")(_check_parts)


class CircuitGraftSweep(CircuitCmapSource, Sweep):
    """Graft the donor's weights of each group's heads (and of all groups together) into the recipient."""

    kind: Literal["circuit_graft"]
    head_groups: list[GroupName] = Field(list(GROUPS), min_length=1)
    """the circuit's head groups, each grafted alone (and all together)"""
    parts: str = "q+k+v+o"
    """which of each head's weights: its rows of q, k, v and its columns of o (`q+k+v+o`, `q`, ...)"""
    panel: str = "circuit CMAP"
    """the report's figure its configurations are drawn in"""

    _parts = field_validator("parts")(_check_parts)


@register
class CircuitWeightGrafting(Method[CircuitGraftSpec]):
    """Bars: accuracy with each group's head weights grafted from the donor, drawn beside the
    circuit_cmap configurations of the same panel (see `circuit_views_figure`)."""

    kind = "circuit_graft"
    sweep = CircuitGraftSweep
    draws_with: ClassVar[str] = "circuit_cmap"

    def expand(
        self, sweep: CircuitGraftSweep, recipient: str, n_layers: int | None, n_heads: int | None = None
    ) -> list[RunConfig]:
        sets = [[g] for g in sweep.head_groups] + ([list(sweep.head_groups)] if len(sweep.head_groups) > 1 else [])
        out = []
        for groups in sets:
            label = "all groups" if len(groups) > 1 else groups[0].replace("_", " ")
            spec = CircuitGraftSpec(head_groups=groups, parts=sweep.parts, **shared_fields(sweep, CircuitCmapSource))
            out.append(
                RunConfig(
                    name=f"{label} weights ({sweep.parts}) from {sweep.donor} into {recipient}",
                    panel=sweep.panel,
                    model=recipient,
                    coords={"groups": label, "donor": sweep.donor, "view": f"weights ({sweep.parts})"},
                    method=spec,
                    kind=self.kind,
                )
            )
        return out

    def rules(self, spec: CircuitGraftSpec) -> list:
        """One `HeadGraft` per group: its heads at its positions."""
        from graftlens.graft.heads import HeadGraft

        circuit = load_circuit(spec.circuit)
        return [
            HeadGraft(spec.donor, list(circuit.group(g).heads), circuit.group(g).positions, spec.parts)
            for g in spec.head_groups
            if circuit.group(g).heads
        ]

    def check(self, config: RunConfig[CircuitGraftSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        from graftlens.graft.heads import expand_head_grafts
        from graftlens.interventions.patching import check_same_shapes

        check_same_shapes(models[config.model], models[spec.donor])
        a = models[config.model].adapter
        circuit = load_circuit(spec.circuit)
        circuit.check(a.n_layers, a.n_heads)
        rules = self.rules(spec)
        if not rules:
            raise RecipeError(f"circuit {spec.circuit}: the groups {spec.head_groups} have no heads")
        expand_head_grafts(models[config.model], {spec.donor: models[spec.donor]}, rules)  # heads fit the model
        return [circuit.group(g).positions for g in spec.head_groups]

    def readout(self, config: RunConfig[CircuitGraftSpec], execution: Execution) -> LastLogits:
        from graftlens.methods.core.grafting import grafted_last_logits

        spec = config.method
        asks = {"target_logprob": execution.measures.target_logprob, "generate": execution.measures.generate}
        donors = {spec.donor: execution.models[spec.donor]}
        return grafted_last_logits(execution.models[config.model], donors, self.rules(spec), **asks)
