"""``et_circuit``: find the entity-tracking circuit by path patching, then test it (Prakash et al.).

The sweep expands into one ``path_patching`` configuration per (stage, sender head)
(`graftlens.methods.path_patching`), scored phase by phase, then ``circuit`` configurations
(`graftlens.methods.circuit`) that mean-ablate every head outside the found circuit, and
outside ``random`` circuits of the same group sizes. It scores nothing itself.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from graftlens.methods.core.circuits import (
    FAITHFULNESS_PHASE,
    GROUPS,
    CircuitSpec,
    GroupSizes,
    PathPatchSpec,
    check_one_box_count_per_batch,
    check_plain_written,
    stage_config_name,
)
from graftlens.methods.core.parts import RunConfig, Sweep
from graftlens.methods.core.registry import Method, register


class CircuitSweep(Sweep):
    """Path patching stage by stage, then the found circuit's faithfulness against ``random`` random ones."""

    renamed: ClassVar[dict[str, str]] = {"clean": "plain"}

    kind: Literal["et_circuit"]
    plain: str
    """the written configuration without interventions: the reference of every relative change"""
    sizes: GroupSizes = GroupSizes()
    """heads each path-patching stage keeps"""
    stages: list[Literal["value_fetchers", "position_transmitters", "position_detectors", "structure_readers"]] = list(GROUPS)
    """the stages run, in order"""
    random: int = Field(5, ge=0, le=1000)
    """random circuits of the same sizes, for each size"""
    mean_prompts: int = Field(100, ge=1, le=100_000)
    """reference prompts the head means are taken over"""
    panel: str = "path patching"
    """the report's figure its configurations are drawn in"""

    def check_data(self, data: dict) -> None:
        if (data.get("entity_tracking") or {}).get("pairs") != ["corrupted"]:
            raise ValueError(
                "et_circuit sweep: path patching needs clean prompts with corrupted sources: "
                "data: {entity_tracking: {pairs: [corrupted]}}"
            )

    def check_batches(self, data: dict, batch_size: int) -> None:
        check_one_box_count_per_batch("et_circuit", data, batch_size)  # one corrupted pair per example

    def check_in_recipe(self, plain_configs: list[str]) -> None:
        check_plain_written("et_circuit", self.plain, plain_configs)
        if self.stages != list(GROUPS[: len(self.stages)]):
            raise ValueError(f"et_circuit sweep: stages run in order, each on the one before: {', '.join(GROUPS)}")


def expand_circuit_sweep(sweep: CircuitSweep, recipient: str, n_layers: int, n_heads: int) -> list[RunConfig]:
    out = []
    for phase, stage in enumerate(sweep.stages, start=1):
        for layer in range(n_layers):
            for head in range(n_heads):
                spec = PathPatchSpec(stage=stage, layer=layer, head=head, plain=sweep.plain, sizes=sweep.sizes)
                coords = {"stage": stage, "layer": str(layer), "head": str(head)}
                out.append(
                    RunConfig(
                        name=stage_config_name(stage, layer, head),
                        panel=f"{sweep.panel}: {stage.replace('_', ' ')}",
                        model=recipient,
                        coords=coords,
                        method=spec,
                        kind="path_patching",
                        phase=phase,
                    )
                )
    if len(sweep.stages) == len(GROUPS):
        for seed in [None, *range(1, sweep.random + 1)]:
            name = "circuit" if seed is None else f"random circuit {seed}"
            spec = CircuitSpec(
                circuit="discovered", plain=sweep.plain, sizes=sweep.sizes, seed=seed, mean_prompts=sweep.mean_prompts
            )
            out.append(
                RunConfig(
                    name=name,
                    panel="faithfulness",
                    model=recipient,
                    coords={"circuit": "random" if seed else "found"},
                    method=spec,
                    kind="circuit",
                    phase=FAITHFULNESS_PHASE,
                )
            )
    return out


@register
class EntityTrackingCircuit(Method[None]):
    """The sweep that makes the path-patching and faithfulness configurations (it scores none itself)."""

    kind = "et_circuit"
    sweep = CircuitSweep
    needs_depth = True
    needs_heads = True

    def expand(self, sweep: CircuitSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        assert n_layers is not None and n_heads is not None
        return expand_circuit_sweep(sweep, recipient, n_layers, n_heads)
