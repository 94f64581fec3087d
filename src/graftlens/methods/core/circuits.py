"""What the entity-tracking circuit methods share (Prakash et al.): the four head groups and where
they work, the path-patching stages that find them, and where a recipe's circuit comes from.

The groups, in the order path patching finds them (each stage's receivers are the group before):

| group | works at | found through |
|---|---|---|
| ``value_fetchers`` (A) | the last token | the logits directly |
| ``position_transmitters`` (B) | the last token | the value fetchers' queries |
| ``position_detectors`` (C) | the query box label | the position transmitters' values |
| ``structure_readers`` (D) | the queried box's label in the execution | the position detectors' values |
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from graftlens.configfiles import Seed
from graftlens.data.entity_tracking import MeanQuery
from graftlens.errors import GraftlensError
from graftlens.methods.core import resources
from graftlens.methods.core.execution import Results
from graftlens.methods.core.parts import Fits, RecipeError, Strict
from graftlens.positions import parse_positions

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.interventions.circuits import Circuit
    from graftlens.interventions.paths import PathInputs
    from graftlens.methods.core.execution import Execution
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData

GROUP_POSITIONS = {
    "value_fetchers": "LT",
    "position_transmitters": "LT",
    "position_detectors": "query_box",
    "structure_readers": "correct_box",
}
GROUPS = tuple(GROUP_POSITIONS)
GroupName = Literal["value_fetchers", "position_transmitters", "position_detectors", "structure_readers"]
"""A head group of the entity-tracking circuit (`GROUPS`, in the order path patching finds them)."""
RECEIVER_POINT = {"position_transmitters": "q", "position_detectors": "v", "structure_readers": "v"}
SHIPPED_CIRCUITS = Path(__file__).resolve().parents[2] / "data" / "files" / "circuits"


class GroupSizes(Strict):
    """How many heads each path-patching stage keeps (the most negative scores, as in the paper's code)."""

    value_fetchers: Annotated[int, Fits("heads")] = Field(10, ge=1)
    """heads kept as value fetchers"""
    position_transmitters: Annotated[int, Fits("heads")] = Field(5, ge=1)
    """heads kept as position transmitters"""
    position_detectors: Annotated[int, Fits("heads")] = Field(5, ge=1)
    """heads kept as position detectors"""
    structure_readers: Annotated[int, Fits("heads")] = Field(3, ge=1)
    """heads kept as structure readers"""


def plain_of(spec: dict) -> str:
    """The plain configuration a stored path-patching or circuit spec is measured against (stores
    written before the key was renamed call it ``clean``)."""
    return spec["plain"] if "plain" in spec else spec["clean"]


def stored_results(run: RunData) -> Results:
    """What ``Execution.results`` gives a readout, read from a finished run (for its report)."""
    by_config = run.by_config

    def results(names: Sequence[str]) -> dict[str, dict[str, float]]:
        return {n: {r.example: r.target_prob for r in by_config.get(n, [])} for n in names}

    return results


def stage_config_name(stage: str, layer: int, head: int) -> str:
    return f"path patching {stage} {layer}.{head}"


def stage_scores(results: Results, clean: str, stage: str, n_layers: int, n_heads: int) -> torch.Tensor:
    """``[layer, head]``: the mean over prompts of ``(p_patched - p_clean) / p_clean`` for every
    sender of ``stage`` (Prakash et al.'s score), from the stored results."""
    import torch

    names = [stage_config_name(stage, layer, head) for layer in range(n_layers) for head in range(n_heads)]
    probs = results([clean, *names])
    plain_probs = probs[clean]
    scores = torch.zeros(n_layers, n_heads)
    for i, name in enumerate(names):
        values = [(p - plain_probs[ex]) / plain_probs[ex] for ex, p in probs[name].items() if plain_probs.get(ex, 0) > 0]
        if len(probs[name]) == 0:
            raise RecipeError(f"path patching: no stored result for {name!r}; its stage has not been run")
        scores[i // n_heads, i % n_heads] = sum(values) / len(values) if values else 0.0
    return scores


def discovered_circuit(results: Results, clean: str, sizes: GroupSizes, n_layers: int, n_heads: int, upto: int = 4) -> Circuit:
    """The first ``upto`` groups as the stored path-patching results pick them. A head that is
    both a value fetcher and a position transmitter counts as a transmitter (as in the paper)."""
    from graftlens.interventions.circuits import Circuit, HeadGroup
    from graftlens.interventions.paths import top_heads

    picked: dict[str, list[tuple[int, int]]] = {}
    for stage in GROUPS[:upto]:
        picked[stage] = top_heads(stage_scores(results, clean, stage, n_layers, n_heads), getattr(sizes, stage))
    if "position_transmitters" in picked:
        picked["value_fetchers"] = [h for h in picked["value_fetchers"] if h not in picked["position_transmitters"]]
    return Circuit({stage: HeadGroup(tuple(heads), GROUP_POSITIONS[stage]) for stage, heads in picked.items()})


def load_circuit(source: str, base_dir: Path | None = None) -> Circuit:
    """A circuit from ``shipped:NAME`` (``graftlens/data/files/circuits/NAME.json``) or a JSON file
    (as ``graftlens report`` writes it next to an et-circuit run's report)."""
    from graftlens.fileio import read_utf8
    from graftlens.interventions.circuits import Circuit, CircuitError

    if source.startswith("shipped:"):
        path = SHIPPED_CIRCUITS / f"{source.removeprefix('shipped:')}.json"
        if not path.is_file():
            known = ", ".join(sorted(f"shipped:{p.stem}" for p in SHIPPED_CIRCUITS.glob("*.json"))) or "none"
            raise RecipeError(f"no shipped circuit {source!r}; shipped: {known}")
    else:
        path = Path(source)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise RecipeError(f"circuit file {path} does not exist (write one with an et-circuit run's `graftlens report`)")
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise RecipeError(f"circuit file {path}: not valid JSON ({exc})") from None
    try:
        circuit = Circuit.from_json(data.get("groups", data) if isinstance(data, dict) else data)
    except CircuitError as exc:
        raise RecipeError(f"circuit file {path}: {exc}") from None
    unknown = [g for g in circuit.groups if g not in GROUP_POSITIONS]
    if unknown:
        raise RecipeError(f"circuit file {path}: unknown group(s) {unknown}; the groups are {', '.join(GROUPS)}")
    for name, group in circuit.groups.items():
        try:
            parse_positions(group.positions)
        except GraftlensError as exc:
            raise RecipeError(f"circuit file {path}: group {name!r}, positions {group.positions!r}: {exc}") from None
    return circuit


def check_fixed_positions(circuit: Circuit, groups: Sequence[str], source: str, kind: str) -> None:
    """For a method that works at each group's fixed positions (`GROUP_POSITIONS`) and does
    not read a circuit file's: refuse a file that says otherwise, rather than ignore it."""
    for name in groups:
        given = circuit.group(name).positions
        if given != GROUP_POSITIONS[name]:
            raise RecipeError(
                f"circuit {source}: group {name!r} has positions {given!r}, but {kind} works at each group's own "
                f"positions ({name}: {GROUP_POSITIONS[name]!r}); set them so in the file"
            )


def pair_inputs(batch: Prompts, pad_id: int) -> PathInputs:
    """The batch as clean prompts with their corrupted ones (``meta["source"]`` of entity-tracking pairs)."""
    from graftlens.eval.batching import collate
    from graftlens.interventions.paths import PathInputs

    missing = [p.id for p in batch.prompts if "source" not in p.meta]
    if missing:
        raise RecipeError(
            f"prompt {missing[0]!r} has no source prompt: circuit methods need entity-tracking pairs "
            "(data: {entity_tracking: {pairs: [corrupted]}} or a desideratum)"
        )
    sources = collate([p.meta["source"] for p in batch.prompts], pad_id)
    return PathInputs(
        batch.input_ids,
        sources.input_ids.to(batch.input_ids.device),
        batch.attention_mask,
        sources.attention_mask.to(batch.input_ids.device),
        batch.spans,
        sources.spans,
    )


def check_plain_written(kind: str, plain: str, plain_configs: list[str]) -> None:
    """A circuit sweep's ``plain`` must name a configuration without grafts written in the recipe."""
    if plain not in plain_configs:
        raise ValueError(
            f"{kind} sweep: plain {plain!r} must name a configuration without grafts (written under "
            f"'configs'); plain configurations: {', '.join(plain_configs) or 'none'}"
        )


def check_one_box_count_per_batch(kind: str, data: dict, batch_size: int) -> None:
    """Mean ablation takes each batch's head means at one box count: with several box counts the
    batch size must divide the prompts of each (entity-tracking prompts come grouped by count)."""
    et = data.get("entity_tracking") or {}
    boxes, per_count = et.get("boxes", []), et.get("examples", 0)
    if len(boxes) > 1 and per_count % batch_size:
        raise ValueError(
            f"{kind} sweep: mean ablation takes each batch's head means at one box count, so with boxes "
            f"{boxes} eval.batch_size ({batch_size}) must divide the prompts of each box count "
            f"(entity_tracking.examples: {per_count})"
        )


def batch_key(batch: Prompts) -> tuple[str, ...]:
    return tuple(p.id for p in batch.prompts)


def proportional_sizes(sizes: GroupSizes, total: int) -> dict[str, int]:
    """``total`` heads shared among the groups in proportion to ``sizes`` (largest remainders;
    each group keeps at least one head while ``total`` allows)."""
    weights = {g: getattr(sizes, g) for g in GROUPS}
    whole = sum(weights.values())
    exact = {g: total * w / whole for g, w in weights.items()}
    out = {g: int(x) for g, x in exact.items()}
    for g in sorted(GROUPS, key=lambda g: (-(exact[g] - out[g]), GROUPS.index(g)))[: total - sum(out.values())]:
        out[g] += 1
    for g in GROUPS:  # a group rounded to nothing takes a head from the largest
        if out[g] == 0 and total >= len(GROUPS):
            out[max(GROUPS, key=lambda x: out[x])] -= 1
            out[g] = 1
    return out


def discovered_circuit_of_size(
    results: Results, clean: str, sizes: GroupSizes, total: int, n_layers: int, n_heads: int
) -> Circuit:
    """The path-patching circuit grown or shrunk to ``total`` (head, group) pairs: each stage's
    top heads, the groups in proportion to ``sizes`` (the sizes the stages were found with). A head
    both a position transmitter and a value fetcher is a transmitter, and the fetchers take the
    next head of their ranking instead, so the circuit keeps its size."""
    from graftlens.interventions.circuits import Circuit, HeadGroup
    from graftlens.interventions.paths import top_heads

    if not 0 < total <= len(GROUPS) * n_layers * n_heads:
        raise RecipeError(f"a path-patching circuit of {total} heads (each group has {n_layers * n_heads} to choose from)")
    want = proportional_sizes(sizes, total)
    picked: dict[str, list[tuple[int, int]]] = {}
    for stage in reversed(GROUPS):  # transmitters before fetchers
        ranked = top_heads(stage_scores(results, clean, stage, n_layers, n_heads), n_layers * n_heads)
        if stage == "value_fetchers":
            ranked = [h for h in ranked if h not in picked["position_transmitters"]]
        picked[stage] = ranked[: want[stage]]
    return Circuit({stage: HeadGroup(tuple(picked[stage]), GROUP_POSITIONS[stage]) for stage in GROUPS if picked[stage]})


class CircuitSpec(Strict):
    kind: Literal["circuit"] = "circuit"
    circuit: str  # "discovered", "shipped:NAME" or a JSON file
    plain: str  # the configuration without interventions: the full model's accuracy
    sizes: GroupSizes = GroupSizes()
    seed: Seed | None = None  # a random circuit of the same sizes
    mean_prompts: int = Field(100, ge=1, le=100_000)
    half: Literal["all", "train", "test"] = "test"
    means: MeanQuery = "no_box"  # the reference prompts' query label: names no box, or any label (the paper's code)


def reference_means(
    execution: Execution,
    model_name: str,
    model: LoadedModel,
    n_boxes: int,
    n: int,
    half: str,
    seed: int = 0,
    query: str = "no_box",
):
    """Head means over ``n`` mean-ablation reference prompts of ``n_boxes`` boxes (kept per run);
    ``query``: what their query label names (`mean_reference`)."""

    def make():
        from graftlens.data.entity_tracking import mean_reference, tokenize_entity_tracking
        from graftlens.eval.batching import batches, pad_id_of
        from graftlens.interventions.circuits import head_means

        prompts = tokenize_entity_tracking(mean_reference(model.tokenizer, n, n_boxes, seed, half, query), model.tokenizer)
        work = [
            (b.input_ids.to(model.device), b.attention_mask.to(model.device))
            for b in batches(prompts, 32, pad_id_of(model.tokenizer))
        ]
        return head_means(model, work)

    return execution.state(resources.HeadMeans(model_name, n_boxes, n, half, seed, query), make)


def boxes_of(batch: Prompts) -> int:
    counts = {p.meta.get("n_boxes") for p in batch.prompts}
    if len(counts) != 1 or None in counts:
        raise RecipeError("mean ablation needs entity-tracking prompts of one box count per batch")
    return int(counts.pop())


class PathPatchSpec(Strict):
    kind: Literal["path_patching"] = "path_patching"
    stage: Literal["value_fetchers", "position_transmitters", "position_detectors", "structure_readers"]
    layer: int
    head: int
    plain: str  # the configuration without interventions, against which each score is taken
    sizes: GroupSizes = GroupSizes()


class CircuitCmapSource(Strict):
    """What a circuit_cmap sweep and each of its configurations share: the donor and the circuit."""

    donor: str
    """the model whose heads' outputs (or weights) are put in"""
    circuit: str
    """the circuit: `"shipped:NAME"` or a `circuit.json` an `et-circuit` report wrote"""


FAITHFULNESS_PHASE = len(GROUPS) + 1
