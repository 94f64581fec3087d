"""``circuit`` configurations: the model with every head outside a circuit mean-ablated
(Prakash et al.'s faithfulness test). The circuit is the one path patching found in the same run
(``discovered``), a shipped one (``shipped:NAME``) or a JSON file; ``seed`` replaces it by a random
circuit of the same group sizes. Head means come from prompts of the same box count and
vocabulary half whose query label names no box, or (``means: any_label``) any label, as the
paper's code draws them.

An ``et_circuit`` sweep makes the configurations of its discovered circuit; a ``circuit`` sweep
makes those of a shipped circuit or a file, on any entity-tracking prompts of the recipe (plain
ones too, as the paper evaluates its circuit on 500 plain prompts)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from graftlens.data.entity_tracking import MeanQuery
from graftlens.methods.core import resources
from graftlens.methods.core.circuits import (
    GROUP_POSITIONS,
    GROUPS,
    CircuitSpec,
    GroupSizes,
    boxes_of,
    check_one_box_count_per_batch,
    check_plain_written,
    discovered_circuit,
    load_circuit,
    plain_of,
    reference_means,
    stored_results,
)
from graftlens.methods.core.parts import RecipeError, RunConfig, Sweep
from graftlens.methods.core.registry import Execution, Method, Table, register
from graftlens.results.metrics import Estimate, estimate, ratio_estimate

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.interventions.circuits import Circuit
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig


class CircuitFileSweep(Sweep):
    """The faithfulness of a given circuit (``shipped:NAME`` or a JSON file) on the recipe's
    entity-tracking prompts, against ``random`` random circuits of its group sizes."""

    kind: Literal["circuit"]
    circuit: str
    """the circuit: `"shipped:NAME"` or a `circuit.json` an `et-circuit` report wrote"""
    plain: str
    """the written configuration without interventions: the full model's reference"""
    random: int = Field(5, ge=0, le=1000)
    """random circuits of the same sizes, for each size"""
    mean_prompts: int = Field(100, ge=1, le=100_000)
    """reference prompts the head means are taken over"""
    means: MeanQuery = "no_box"
    """the reference prompts' query label: `no_box` (names no box) or `any` (any label, as the paper's code)"""
    half: Literal["all", "train", "test"] = "test"
    """which half of the entity-tracking vocabulary the prompts draw from: `train`, `test` or `all`"""
    panel: str = "faithfulness"
    """the report's figure its configurations are drawn in"""

    @field_validator("circuit")
    @classmethod
    def _given(cls, v: str) -> str:
        if v == "discovered":
            raise ValueError("a circuit sweep tests a shipped circuit or a file; an et_circuit sweep tests the one it discovers")
        return v  # read and checked against the model before scoring (``check``): reading a recipe loads no torch

    def check_data(self, data: dict) -> None:
        if not data.get("entity_tracking"):
            raise ValueError(
                "circuit sweep: mean ablation at the circuit's positions needs entity-tracking prompts "
                "(data: {entity_tracking: ...})"
            )

    def check_batches(self, data: dict, batch_size: int) -> None:
        check_one_box_count_per_batch("circuit", data, batch_size)

    def check_in_recipe(self, plain_configs: list[str]) -> None:
        check_plain_written("circuit", self.plain, plain_configs)


def circuit_of(spec: CircuitSpec, execution: Execution, model: LoadedModel) -> Circuit:
    """The spec's circuit (the found one, or a random one of its sizes), checked against the model."""
    from graftlens.interventions.circuits import random_circuit

    a = model.adapter
    if spec.circuit == "discovered":
        if execution.results is None:
            raise RecipeError("a discovered circuit needs the stored path-patching results of the run")
        sizes = spec.sizes
        circuit = execution.state(
            resources.DiscoveredCircuit(spec.plain, sizes, a.n_layers, a.n_heads),
            lambda: discovered_circuit(execution.results, spec.plain, sizes, a.n_layers, a.n_heads),
        )
    else:
        circuit = load_circuit(spec.circuit)
    circuit.check(a.n_layers, a.n_heads)
    return circuit if spec.seed is None else random_circuit(circuit, a.n_layers, a.n_heads, spec.seed)


@register
class CircuitFaithfulness(Method[CircuitSpec]):
    """The found circuit as a diagram of head groups; a table of accuracy and faithfulness."""

    kind = "circuit"
    sweep = CircuitFileSweep

    def expand(
        self, sweep: CircuitFileSweep, recipient: str, n_layers: int | None, n_heads: int | None = None
    ) -> list[RunConfig]:
        out = []
        for seed in [None, *range(1, sweep.random + 1)]:
            spec = CircuitSpec(
                circuit=sweep.circuit,
                plain=sweep.plain,
                seed=seed,
                mean_prompts=sweep.mean_prompts,
                means=sweep.means,
                half=sweep.half,
            )
            name = sweep.circuit if seed is None else f"random circuit {seed} of {sweep.circuit}'s sizes"
            coords = {"circuit": "random" if seed else "given"}
            out.append(RunConfig(name=name, panel=sweep.panel, model=recipient, coords=coords, method=spec, kind="circuit"))
        return out

    def check(self, config: RunConfig[CircuitSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        if spec.circuit != "discovered":
            a = models[config.model].adapter
            circuit = load_circuit(spec.circuit)
            circuit.check(a.n_layers, a.n_heads)
            return [g.positions for g in circuit.groups.values()]  # each group kept at the file's positions
        return list(GROUP_POSITIONS.values())

    def readout(self, config: RunConfig[CircuitSpec], execution: Execution) -> LastLogits:
        spec = config.method
        from graftlens.interventions.circuits import mean_ablated_logits

        model = execution.models[config.model]
        circuit = circuit_of(spec, execution, model)

        def run(batch: Prompts) -> torch.Tensor:
            n_boxes = boxes_of(batch)
            means = reference_means(execution, config.model, model, n_boxes, spec.mean_prompts, spec.half, query=spec.means)
            return mean_ablated_logits(model, batch.input_ids, batch.attention_mask, circuit, means, batch.spans)

        return run

    def figure_name(self, panel: str) -> str:
        return "circuit"  # the figure is the found circuit's diagram; its faithfulness is a table

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        circuit = stored_circuit(run, configs)
        if circuit is None:
            return None
        from graftlens import charts

        names = [g for g in reversed(GROUPS) if g in circuit.groups]  # structure readers first, as the flow goes
        groups = [(n.replace("_", " "), circuit.groups[n].positions, circuit.groups[n].heads) for n in names]
        reads = {"structure_readers": "V", "position_detectors": "V", "position_transmitters": "Q", "value_fetchers": "direct"}
        edges = [(i, i + 1, reads[n]) for i, n in enumerate(names)]
        title = f"{run.name}: the circuit path patching found (arrows: which input of the next head group it reaches)"
        return charts.circuit_diagram(title, groups, edges), title

    def tables(self, run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
        """Accuracy of the full model, the circuit and random circuits, and faithfulness (their ratio)."""
        by_config = run.by_config
        spec = next((c.method for c in configs if c.method), None)
        if spec is None or plain_of(spec) not in by_config:
            return []
        full = by_config[plain_of(spec)]
        rows: list[tuple[str, list[Estimate | None]]] = [
            (f"full model ({plain_of(spec)})", [estimate(full, "top1", run.n_boot, run.seed), None])
        ]
        randoms = [c for c in configs if c.method and c.method.get("seed") is not None and c.name in by_config]
        for c in configs:
            if c.name in by_config and c.method and c.method.get("seed") is None:
                rows.append(
                    (
                        c.name,
                        [
                            estimate(by_config[c.name], "top1", run.n_boot, run.seed),
                            ratio_estimate(by_config[c.name], full, run.n_boot, run.seed),
                        ],
                    )
                )
        if randoms:
            pooled = [r for c in randoms for r in by_config[c.name]]
            label = f"random circuits (mean of {len(randoms)})"
            values = [estimate(pooled, "top1", run.n_boot, run.seed), ratio_estimate(pooled, full, run.n_boot, run.seed)]
            rows.append((label, values))
        return [
            Table(
                f"{panel}: accuracy with every head outside the circuit mean-ablated",
                "circuit",
                ["accuracy (top-1)", "faithfulness (÷ full model)"],
                rows,
            )
        ]

    def files(self, run: RunData, panel: str, configs: list[StoredConfig]) -> dict[str, str]:
        circuit = stored_circuit(run, configs)
        if circuit is None:
            return {}
        return {"circuit.json": circuit_json(circuit, run.manifest.get("recipient"), run.run_id)}


def stored_circuit(run: RunData, configs: list[StoredConfig]) -> Circuit | None:
    """The circuit of a faithfulness group, rebuilt from the stored results (None if incomplete)."""
    spec = next((c.method for c in configs if c.method and c.method.get("seed") is None), None)
    if spec is None:
        return None
    if spec["circuit"] != "discovered":
        return load_circuit(spec["circuit"])
    pp = [c for c in run.configs if c.kind == "path_patching"]
    if not pp:
        return None
    by_config = run.by_config
    if any(c.name not in by_config for c in pp) or plain_of(spec) not in by_config:
        return None
    n_layers = 1 + max(int(c.coords["layer"]) for c in pp)
    n_heads = 1 + max(int(c.coords["head"]) for c in pp)
    return discovered_circuit(stored_results(run), plain_of(spec), GroupSizes(**spec.get("sizes", {})), n_layers, n_heads)


def circuit_json(circuit: Circuit, model: object, run_id: str) -> str:
    """A circuit file, one group per block and its heads on one line (``[[layer, head], ...]``)."""
    groups = []
    for name, g in circuit.groups.items():
        heads = json.dumps([list(h) for h in g.heads])
        groups.append(f'    "{name}": {{"positions": {json.dumps(g.positions)}, "heads": {heads}}}')
    body = ",\n".join(groups)
    return f'{{\n  "model": {json.dumps(model)},\n  "run": {json.dumps(run_id)},\n  "groups": {{\n{body}\n  }}\n}}\n'
