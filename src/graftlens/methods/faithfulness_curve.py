"""``faithfulness_curve``: circuits of growing size, each with every other head mean-ablated,
against random circuits of the same size (Prakash et al.'s faithfulness, as a curve).

A circuit comes from one of three rankings of the heads:

- ``eap_edges``: edge attribution patching (`edge_attribution`)
  over the run's clean/corrupted pairs, the heads in the order its strongest edges reach them;
- ``eap_nodes``: the same pass's node scores (attribution patching of each head's output);
- ``eap_edge_circuit``: EAP's strongest edges themselves, kept as an edge circuit
  (`edge_ablated_logits`, every other edge
  mean-ablated): at size ``k`` the fewest first edges of the ranking whose circuit holds ``k``
  heads (`edges_for_heads`);
- ``path_patching``: the stage-by-stage circuit of the recipe's ``et_circuit`` sweep, its
  groups grown or shrunk in proportion (`discovered_circuit_of_size`).

Heads are kept at every position (``positions: all``), or, for the path-patching circuit, each
group at its own positions (``groups``, the paper's procedure). Random circuits of each size are
drawn for each of the two. Head means come from the reference prompts of
`graftlens.methods.circuit`: query labels naming no box, or (``means: any_label``) any
label, as the paper's code draws them. EAP's rankings are kept beside the store
(``eap-scores.safetensors``), and the report counts each path-patching group's heads among
EAP's first heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator, model_validator

from graftlens.configfiles import Seed
from graftlens.data.entity_tracking import MeanQuery
from graftlens.methods.core import resources
from graftlens.methods.core.circuits import (
    FAITHFULNESS_PHASE,
    GROUP_POSITIONS,
    GroupSizes,
    boxes_of,
    check_plain_written,
    discovered_circuit_of_size,
    pair_inputs,
    plain_of,
    reference_means,
)
from graftlens.methods.core.parts import Fits, RecipeError, RunConfig, Strict, Sweep
from graftlens.methods.core.registry import Execution, Method, Table, register
from graftlens.results.metrics import Estimate, ratio_estimate

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.interventions.circuits import Circuit
    from graftlens.interventions.edge_circuits import EdgeCircuit
    from graftlens.interventions.edges import EdgeScores
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig

Ranking = Literal["eap_edges", "eap_nodes", "eap_edge_circuit", "path_patching"]
LABELS = {
    "eap_edges": "EAP (edges)",
    "eap_edge_circuit": "EAP edge circuit",
    "eap_nodes": "EAP (nodes)",
    "path_patching": "path patching",
    "random": "random heads",
    "every_head": "every head",
}
WHERE = {"all": "all positions", "groups": "group positions"}
EAP_FILE = "eap-scores.safetensors"  # kept beside the store: each model's EAP rankings and scores


class FaithfulnessSpec(Strict):
    kind: Literal["faithfulness_curve"] = "faithfulness_curve"
    plain: str  # the configuration without interventions: the full model's accuracy
    ranking: Ranking | Literal["random", "every_head"]  # every_head: every head kept at each group's positions
    size: Annotated[int, Fits("heads")] = Field(ge=1)
    positions: Literal["all", "groups"] = "all"
    seed: Seed | None = None  # random circuits only
    path_patching_sizes: GroupSizes = GroupSizes()  # the et_circuit sweep's sizes (its stages' receivers)
    steps: int = Field(1, ge=1, le=64)  # EAP-IG steps (1: EAP)
    mean_prompts: int = Field(100, ge=1, le=100_000)
    means: MeanQuery = "no_box"  # the reference prompts' query label: names no box, or any label (the paper's code)
    half: Literal["all", "train", "test"] = "test"

    @model_validator(mode="after")
    def _consistent(self) -> FaithfulnessSpec:
        if self.positions == "groups" and self.ranking not in ("path_patching", "random", "every_head"):
            raise ValueError(f"ranking {self.ranking!r} keeps its heads at every position (positions: all)")
        if (self.seed is None) != (self.ranking != "random"):
            raise ValueError("a random circuit needs a seed, and only a random circuit takes one")
        return self


class FaithfulnessCurveSweep(Sweep):
    """Faithfulness of growing circuits from each ranking, and of random circuits of each size."""

    kind: Literal["faithfulness_curve"]
    plain: str
    """the written configuration without interventions: the full model's reference"""
    rankings: list[Ranking] = Field(["eap_edges", "eap_nodes", "eap_edge_circuit", "path_patching"], min_length=1)
    """how heads are ranked: `eap_edges`, `eap_nodes`, `eap_edge_circuit`, `path_patching`"""
    sizes: Annotated[list[int], Fits("heads")] = Field(min_length=1)
    """circuit sizes, in heads"""
    positions: list[Literal["all", "groups"]] = Field(["all", "groups"], min_length=1)
    """where a path-patching circuit keeps its heads: `all`, or its `groups`' positions"""
    path_patching_sizes: GroupSizes = GroupSizes()
    """heads each path-patching stage keeps"""
    random: int = Field(3, ge=0, le=100)
    """random circuits per size and positions"""
    steps: int = Field(1, ge=1, le=64)
    """EAP-IG steps (1: EAP)"""
    mean_prompts: int = Field(100, ge=1, le=100_000)
    """reference prompts the head means are taken over"""
    means: MeanQuery = "no_box"
    """the reference prompts' query label: `no_box` (names no box) or `any` (any label, as the paper's code)"""
    panel: str = "faithfulness curve"
    """the report's figure its configurations are drawn in"""

    @field_validator("sizes")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v) or v != sorted(set(v)):
            raise ValueError(f"sizes {v}: positive head counts, increasing, each once")
        return v

    def check_data(self, data: dict) -> None:
        if (data.get("entity_tracking") or {}).get("pairs") != ["corrupted"]:
            raise ValueError(
                "faithfulness_curve sweep: edge attribution needs clean prompts with corrupted sources: "
                "data: {entity_tracking: {pairs: [corrupted]}}"
            )

    def check_in_recipe(self, plain_configs: list[str]) -> None:
        check_plain_written("faithfulness_curve", self.plain, plain_configs)
        if "groups" in self.positions and "path_patching" not in self.rankings:
            raise ValueError("faithfulness_curve sweep: positions 'groups' are the path-patching circuit's; add it to rankings")

    def check_with_sweeps(self, sweeps: list[Sweep]) -> None:
        if "path_patching" not in self.rankings:
            return
        found = [s for s in sweeps if s.kind == "et_circuit"]
        if not any(s.plain == self.plain and s.sizes == self.path_patching_sizes for s in found):  # type: ignore[attr-defined]
            raise ValueError(
                "faithfulness_curve sweep: the path_patching ranking reads the stages of an et_circuit sweep of the same "
                f"plain ({self.plain!r}) and sizes (path_patching_sizes: {self.path_patching_sizes.model_dump()}); "
                + ("the recipe has none" if not found else "the recipe's differ")
            )


def _config(spec: FaithfulnessSpec, sweep: FaithfulnessCurveSweep, recipient: str) -> RunConfig:
    where = WHERE[spec.positions]
    label = f"{LABELS[spec.ranking]}, {where}"
    name = f"faithfulness {label}, {spec.size} heads" + (f", seed {spec.seed}" if spec.seed is not None else "")
    if spec.means != "no_box":
        name += f" (means: {spec.means.replace('_', ' ')})"
    coords = {"ranking": spec.ranking, "positions": spec.positions, "size": str(spec.size)}
    return RunConfig(
        name=name,
        panel=sweep.panel,
        model=recipient,
        coords=coords,
        method=spec,
        kind="faithfulness_curve",
        phase=FAITHFULNESS_PHASE,
    )


@register
class FaithfulnessCurves(Method[FaithfulnessSpec]):
    """A line per ranking: faithfulness against circuit size, with random circuits as a band."""

    kind = "faithfulness_curve"
    sweep = FaithfulnessCurveSweep
    needs_heads = True

    def expand(
        self, sweep: FaithfulnessCurveSweep, recipient: str, n_layers: int | None, n_heads: int | None = None
    ) -> list[RunConfig]:
        shared = dict(
            plain=sweep.plain,
            path_patching_sizes=sweep.path_patching_sizes,
            steps=sweep.steps,
            mean_prompts=sweep.mean_prompts,
            means=sweep.means,
        )
        out = []
        for k in sweep.sizes:
            for ranking in sweep.rankings:
                for positions in sweep.positions if ranking == "path_patching" else ["all"]:
                    out.append(
                        _config(FaithfulnessSpec(ranking=ranking, size=k, positions=positions, **shared), sweep, recipient)
                    )
            uses_all = "all" in sweep.positions or any(r != "path_patching" for r in sweep.rankings)
            random_positions = [p for p in ("all", "groups") if p in sweep.positions or (p == "all" and uses_all)]
            for positions in random_positions:
                for seed in range(1, sweep.random + 1):
                    spec = FaithfulnessSpec(ranking="random", size=k, positions=positions, seed=seed, **shared)
                    out.append(_config(spec, sweep, recipient))
        if "groups" in sweep.positions and n_layers is not None and n_heads is not None:
            # what the paper's procedure leaves when no head is dropped at the groups' positions
            spec = FaithfulnessSpec(ranking="every_head", size=n_layers * n_heads, positions="groups", **shared)
            out.append(_config(spec, sweep, recipient))
        return out

    def check(self, config: RunConfig[FaithfulnessSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        if spec.positions == "groups":
            return list(GROUP_POSITIONS.values())
        return ["all"]

    def circuit(self, spec: FaithfulnessSpec, execution: Execution, model_name: str) -> Circuit:
        """The configuration's circuit (a ranking's first ``size`` heads, or a random one)."""
        from graftlens.interventions.circuits import random_circuit
        from graftlens.interventions.faithfulness import random_heads, top_circuit

        a = execution.models[model_name].adapter
        if spec.ranking == "every_head":
            from graftlens.interventions.circuits import Circuit, HeadGroup

            every = tuple((layer, h) for layer in range(a.n_layers) for h in range(a.n_heads))
            return Circuit({g: HeadGroup(every, where) for g, where in GROUP_POSITIONS.items()})
        if spec.positions == "groups":
            if execution.results is None:
                raise RecipeError("a path-patching circuit needs the stored path-patching results of the run")
            sizes = spec.path_patching_sizes
            found = discovered_circuit_of_size(execution.results, spec.plain, sizes, spec.size, a.n_layers, a.n_heads)
            return found if spec.seed is None else random_circuit(found, a.n_layers, a.n_heads, spec.seed)
        if spec.ranking == "random":
            return random_heads(a.n_layers, a.n_heads, spec.size, spec.seed or 0)
        if spec.ranking == "path_patching":  # the same heads, everywhere: grown until ``size`` distinct ones
            for total in range(spec.size, len(GROUP_POSITIONS) * a.n_layers * a.n_heads + 1):
                found = self.circuit(spec.model_copy(update={"positions": "groups", "size": total}), execution, model_name)
                heads = list(dict.fromkeys(h for g in found.groups.values() for h in g.heads))
                if len(heads) >= spec.size:
                    return top_circuit(heads, spec.size)
        scores = eap_scores(execution, model_name, spec.steps)
        ranking = scores.heads_by_edges() if spec.ranking == "eap_edges" else scores.heads_by_nodes()
        return top_circuit(ranking, spec.size)

    def edge_circuit(self, spec: FaithfulnessSpec, execution: Execution, model_name: str) -> EdgeCircuit:
        """EAP's first edges, as few as hold ``size`` heads; its size in edges and in heads is
        kept beside the store for the report."""
        import torch

        from graftlens.interventions.edge_circuits import edges_for_heads

        a = execution.models[model_name].adapter
        found = edges_for_heads(eap_scores(execution, model_name, spec.steps), spec.size)
        if execution.keep is not None:
            n_heads = len(found.heads(a.n_layers, a.n_heads, a.n_kv_heads))
            sizes = torch.tensor([spec.size, len(found.edges), n_heads])
            execution.keep(EAP_FILE, {f"{model_name}/steps{spec.steps}/edge_circuit/{spec.size}": sizes}, {})
        return found

    def readout(self, config: RunConfig[FaithfulnessSpec], execution: Execution) -> LastLogits:
        from graftlens.interventions.circuits import mean_ablated_logits
        from graftlens.interventions.edge_circuits import edge_ablated_logits

        spec = config.method
        model = execution.models[config.model]
        edges = spec.ranking == "eap_edge_circuit"
        make = self.edge_circuit if edges else self.circuit
        circuit = execution.state(resources.FaithfulnessCircuit(config.name), lambda: make(spec, execution, config.model))

        def run(batch: Prompts) -> torch.Tensor:
            n_boxes = boxes_of(batch)
            means = reference_means(execution, config.model, model, n_boxes, spec.mean_prompts, spec.half, query=spec.means)
            if edges:
                return edge_ablated_logits(model, batch.input_ids, batch.attention_mask, circuit, means)
            return mean_ablated_logits(model, batch.input_ids, batch.attention_mask, circuit, means, batch.spans)

        return run

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        from graftlens import charts

        series, xs, full = curves(run, configs)
        if not series:
            return None
        title = (
            f"{run.name}: faithfulness as the circuit grows (every head or edge outside it mean-ablated), "
            "random circuits of each size"
        )
        fig = charts.line_chart(
            title, xs, series, "faithfulness (accuracy ÷ full model's)", "circuit size (heads)", legend_title="circuit"
        )
        fig.axes[0].axhline(1.0, color="0.5", linewidth=0.8, linestyle="--")
        reference = every_head_value(run, configs)
        if reference is not None:
            ax = fig.axes[0]
            ax.axhline(reference.value, color="tab:red", linewidth=0.9, linestyle=":")
            ax.annotate(
                f"every head at the groups' positions: {reference.value:.2f}",
                (0, reference.value),
                xytext=(2, 3),
                textcoords="offset points",
                fontsize=8,
                color="tab:red",
            )
        fig.set_size_inches(10.5, 4.6)  # room for the plot beside its legend of long labels
        return fig, title

    def tables(self, run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
        series, xs, full = curves(run, configs)
        if not series:
            return []
        rows = [(label, list(values)) for label, values in series.items()]
        columns = [f"{k} heads" for k in xs]
        tables = [Table(f"{panel}: faithfulness by circuit size (full model accuracy {full:.3f})", "circuit", columns, rows)]
        reference = every_head_value(run, configs)
        if reference is not None:
            rows = [("every head kept at each group's positions, all heads ablated elsewhere", [reference])]
            tables.append(
                Table(f"{panel}: every head kept at the groups' positions, none elsewhere", "circuit", ["faithfulness"], rows)
            )
        return tables + edge_circuit_tables(run, panel, configs) + overlap_tables(run, panel, configs)


def every_head_value(run: RunData, configs: list[StoredConfig]) -> Estimate | None:
    """Faithfulness with every head kept at every group's positions (None: not in the panel)."""
    by_config = run.by_config
    c = next((c for c in configs if c.method and c.method.get("ranking") == "every_head" and c.name in by_config), None)
    if c is None or plain_of(c.method) not in by_config:
        return None
    return ratio_estimate(by_config[c.name], by_config[plain_of(c.method)], run.n_boot, run.seed)


def curves(run: RunData, configs: list[StoredConfig]) -> tuple[dict[str, list[Estimate | None]], list[str], float]:
    """``({series label: faithfulness per size}, sizes, full accuracy)`` from the stored rows;
    random circuits of one size and positions are pooled into one estimate."""
    by_config = run.by_config
    spec = next((c.method for c in configs if c.method), None)
    if spec is None or plain_of(spec) not in by_config:
        return {}, [], float("nan")
    full = by_config[plain_of(spec)]
    sizes = sorted({int(c.coords["size"]) for c in configs if c.method.get("ranking") != "every_head"})
    pooled: dict[tuple[str, str, int], list] = {}
    for c in configs:
        if c.name in by_config:
            if c.method.get("means", "no_box") != spec.get("means", "no_box"):
                raise RecipeError(f"panel {c.panel!r} mixes head means over two kinds of reference prompts: give each its own")
            if c.method["ranking"] == "every_head":
                continue  # one reference value, not a point of a curve (see every_head_value)
            key = (c.method["ranking"], c.method.get("positions", "all"), int(c.coords["size"]))
            pooled.setdefault(key, []).extend(by_config[c.name])
    series: dict[str, list[Estimate | None]] = {}
    for ranking, positions, _ in sorted(pooled, key=lambda k: (k[0] == "random", k[0], k[1])):
        label = f"{LABELS[ranking]}, {WHERE[positions]}"
        if ranking == "random" and positions == "groups":
            label = "random heads, as many per group, group positions"
        if label in series:
            continue
        series[label] = [
            ratio_estimate(pooled[(ranking, positions, k)], full, run.n_boot, run.seed)
            if (ranking, positions, k) in pooled
            else None
            for k in sizes
        ]
    accuracy = sum(r.hit(1) for r in full) / len(full) if full else float("nan")
    return series, [str(k) for k in sizes], accuracy


def eap_scores(execution: Execution, model_name: str, steps: int) -> EdgeScores:
    """Edge attribution over every batch of the run (its clean prompts and their corrupted
    sources), the mean over prompts; made once per run and model."""

    def make() -> EdgeScores:

        from graftlens.eval.batching import pad_id_of
        from graftlens.interventions.edges import edge_attribution

        model = execution.models[model_name]
        total, n = None, 0
        for batch in execution.batches:
            part = edge_attribution(model, pair_inputs(batch, pad_id_of(model.tokenizer)), batch.target_ids, steps=steps)
            rows = batch.input_ids.shape[0]
            if total is None:
                total = replace(part, scores=part.scores * rows, node_scores=part.node_scores * rows)
            else:
                total = replace(
                    total, scores=total.scores + part.scores * rows, node_scores=total.node_scores + part.node_scores * rows
                )
            n += rows
        if total is None:
            raise RecipeError("edge attribution needs prompts; the run has none")
        scores = replace(total, scores=total.scores / n, node_scores=total.node_scores / n)
        if execution.keep is not None:  # the rankings, for the report's overlap with the path-patching circuit
            import torch

            prefix = f"{model_name}/steps{steps}"
            tensors = {
                f"{prefix}/heads_by_edges": torch.tensor(scores.heads_by_edges()),
                f"{prefix}/heads_by_nodes": torch.tensor(scores.heads_by_nodes()),
                f"{prefix}/node_scores": scores.node_scores.float(),
                f"{prefix}/edge_scores": scores.scores.float(),
            }
            execution.keep(EAP_FILE, tensors, {"receivers": ",".join(map(str, scores.receivers))})
        return scores

    return execution.state(resources.EdgeScoresOf(model_name, steps), make)


def edge_circuit_tables(run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
    """The EAP edge circuit's size at each point of the curve: edges kept, and heads in the
    circuit (those with a path of kept edges to the logits)."""
    path = run.run_dir / EAP_FILE
    spec = next((c.method for c in configs if c.method and c.method.get("ranking") == "eap_edge_circuit"), None)
    if spec is None or not path.is_file():
        return []
    from safetensors.torch import load_file

    kept = load_file(str(path))
    model = next(c.model for c in configs)
    prefix = f"{model}/steps{spec.get('steps', 1)}/edge_circuit/"
    sizes = sorted(kept[name].tolist() for name in kept if name.startswith(prefix))
    if not sizes:
        return []
    rows = [("edges kept", [n_edges for _, n_edges, _ in sizes]), ("heads in the circuit", [h for _, _, h in sizes])]
    columns = [f"{k} heads" for k, _, _ in sizes]
    title = (
        f"{panel}: the EAP edge circuit at each size "
        "(EAP's first edges, as few as hold that many heads; a head is in when its kept edges reach the logits)"
    )
    return [Table(title, "", columns, rows)]


def overlap_tables(run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
    """How many heads of each path-patching group EAP's first ``N`` heads hold, ``N`` the
    path-patching circuit's distinct heads (at the sizes its stages were found with)."""
    from graftlens.interventions.paths import top_heads
    from graftlens.methods.core.circuits import GROUPS, stage_scores, stored_results

    path = run.run_dir / EAP_FILE
    spec = next((c.method for c in configs if c.method), None)
    pp = [c for c in run.configs if c.kind == "path_patching"]
    by_config = run.by_config
    if spec is None or not path.is_file() or not pp or any(c.name not in by_config for c in pp):
        return []
    from safetensors.torch import load_file

    kept = load_file(str(path))
    model = next(c.model for c in configs)
    prefix = f"{model}/steps{spec.get('steps', 1)}"
    if f"{prefix}/heads_by_edges" not in kept:
        return []
    n_layers = 1 + max(int(c.coords["layer"]) for c in pp)
    n_heads = 1 + max(int(c.coords["head"]) for c in pp)
    sizes = GroupSizes(**spec.get("path_patching_sizes", {}))
    results = stored_results(run)
    groups = {g: top_heads(stage_scores(results, plain_of(spec), g, n_layers, n_heads), getattr(sizes, g)) for g in GROUPS}
    circuit = {h for heads in groups.values() for h in heads}
    n = len(circuit)
    ranked = {
        LABELS[r]: {tuple(int(x) for x in h) for h in kept[f"{prefix}/heads_by_{r.removeprefix('eap_')}"][:n].tolist()}
        for r in ("eap_edges", "eap_nodes")
    }
    rows: list[tuple[str, list]] = []
    for g, heads in [*groups.items(), ("the whole circuit", sorted(circuit))]:
        cells = [f"{len(set(heads) & top)} of {len(heads)}" for top in ranked.values()]
        chance = len(heads) * n / (n_layers * n_heads)
        rows.append((g.replace("_", " "), [*cells, f"{chance:.1f}"]))
    title = f"{panel}: path-patching heads among the first {n} heads of EAP, as many as the path-patching circuit has"
    return [Table(title, "group", [*ranked, "by chance (expected)"], rows)]
