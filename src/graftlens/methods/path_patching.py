"""``et_circuit``: find the entity-tracking circuit by path patching, then test it (Prakash et al.).

The sweep expands into one configuration per (stage, sender head), scored phase by phase:
value fetchers (senders at the last token, straight to the logits), then position transmitters
(through the value fetchers' queries), position detectors (at the query label, through the
transmitters' values) and structure readers (at the queried box's label, through the detectors'
values). Each stage's receivers are the heads the stage before it picked, read from the store.
The corrupted prompt of each pair is the source; the clean prompt is the base, and a head's score
is the relative change of the correct object's probability against the ``clean`` configuration.

After the stages, ``faithfulness`` configurations (:mod:`graftlens.methods.faithfulness`) mean-ablate
every head outside the found circuit, and outside ``random`` circuits of the same group sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from graftlens.bounded import BoundedStore
from graftlens.methods.base import RecipeError, RunConfig, Strict, Sweep
from graftlens.methods.circuits import (
    GROUP_POSITIONS,
    GROUPS,
    RECEIVER_POINT,
    GroupSizes,
    batch_key,
    discovered_circuit,
    pair_inputs,
    stage_config_name,
    stage_scores,
    stored_results,
)
from graftlens.methods.faithfulness import CircuitSpec
from graftlens.methods.registry import Context, Method, register

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import PromptBatch
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig

FAITHFULNESS_PHASE = len(GROUPS) + 1


class PathPatchSpec(Strict):
    kind: Literal["path_patching"] = "path_patching"
    stage: Literal["value_fetchers", "position_transmitters", "position_detectors", "structure_readers"]
    layer: int
    head: int
    clean: str
    sizes: GroupSizes = GroupSizes()


class CircuitSweep(Sweep):
    """Path patching stage by stage, then the found circuit's faithfulness against ``random`` random ones."""

    kind: Literal["et_circuit"]
    clean: str  # the recipient without interventions: the base of every relative change
    sizes: GroupSizes = GroupSizes()
    stages: list[Literal["value_fetchers", "position_transmitters", "position_detectors", "structure_readers"]] = list(GROUPS)
    random: int = Field(5, ge=0, le=1000)  # random circuits of the same sizes
    mean_prompts: int = Field(100, ge=1, le=100_000)  # reference prompts of the head means
    recipient: str | None = None
    group: str = "path patching"

    def check_data(self, data: dict) -> None:
        if (data.get("entity_tracking") or {}).get("pairs") != ["corrupted"]:
            raise ValueError(
                "et_circuit sweep: path patching needs clean prompts with corrupted sources: "
                "data: {entity_tracking: {pairs: [corrupted]}}"
            )

    def check_batches(self, data: dict, batch_size: int) -> None:
        et = data.get("entity_tracking") or {}
        boxes, per_count = et.get("boxes", []), et.get("examples", 0)  # one corrupted pair per example
        if len(boxes) > 1 and per_count % batch_size:
            raise ValueError(
                f"et_circuit sweep: mean ablation takes each batch's head means at one box count, so with boxes "
                f"{boxes} eval.batch_size ({batch_size}) must divide the prompts of each box count "
                f"(entity_tracking.examples: {per_count})"
            )

    def check_in_recipe(self, plain_configs: list[str]) -> None:
        if self.clean not in plain_configs:
            raise ValueError(
                f"et_circuit sweep: clean {self.clean!r} must name a configuration without grafts (written under "
                f"'configs'); plain configurations: {', '.join(plain_configs) or 'none'}"
            )
        if self.stages != list(GROUPS[: len(self.stages)]):
            raise ValueError(f"et_circuit sweep: stages run in order, each on the one before: {', '.join(GROUPS)}")


@register
class PathPatching(Method[PathPatchSpec]):
    """One layer × head heat map per stage, the picked heads outlined."""

    kind = "path_patching"
    summarised = False
    needs_depth = True
    needs_heads = True

    def check(self, config: RunConfig[PathPatchSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        a = models[config.model].adapter
        if not (0 <= spec.layer < a.n_layers and 0 <= spec.head < a.n_heads):
            raise RecipeError(f"sender {spec.layer}.{spec.head} out of range")
        return [GROUP_POSITIONS[spec.stage], "LT"]

    def readout(self, config: RunConfig[PathPatchSpec], context: Context) -> LastLogits:
        spec = config.method
        from graftlens.eval.batching import pad_id_of
        from graftlens.interventions.path_patching import PreparedBatch, Receiver, prepared_bytes

        model = context.models[config.model]
        a = model.adapter
        pad = pad_id_of(model.tokenizer)
        stage_index = GROUPS.index(spec.stage)
        position = GROUP_POSITIONS[spec.stage]
        receivers: list[Receiver] | str = "logits"
        receiver_positions = "LT"
        if stage_index > 0:
            previous = GROUPS[stage_index - 1]
            if context.results is None:
                raise RecipeError(f"path patching stage {spec.stage!r} needs the stored results of {previous!r}")
            chosen = context.state(
                ("pp-picked", config.model, previous),
                lambda: discovered_circuit(context.results, spec.clean, spec.sizes, a.n_layers, a.n_heads, stage_index),
            ).group(previous)
            point = RECEIVER_POINT[spec.stage]
            per_kv = a.n_heads // a.n_kv_heads
            receivers = sorted(
                {Receiver(point, layer, head if point == "q" else head // per_kv) for layer, head in chosen.heads},
                key=lambda r: (r.layer, r.head),
            )
            # The receivers read the sender's column: value fetchers' queries at the last token,
            # transmitters' values at the query label, detectors' values at the queried box.
            receiver_positions = position
        caches: BoundedStore = context.state(("pp-caches", config.model), lambda: BoundedStore(2 << 30))

        def run(batch: PromptBatch) -> torch.Tensor:
            key = (batch_key(batch), spec.stage)
            if key not in caches:  # the clean and corrupted runs and the shared prefixes, once per batch and stage
                inputs = pair_inputs(batch, pad)
                prepared = PreparedBatch(
                    model, inputs, sender_positions=position, receivers=receivers, receiver_positions=receiver_positions
                )
                caches.put(key, prepared, prepared_bytes(prepared))
            return caches.get(key).logits((spec.layer, spec.head))

        return run

    def figure(self, run: RunData, group: str, configs: list[StoredConfig]):
        from graftlens import charts
        from graftlens.interventions.path_patching import top_heads

        spec = configs[0].method or {}
        stage, clean = spec["stage"], spec["clean"]
        sizes = GroupSizes(**spec.get("sizes", {}))
        n_layers = 1 + max(int(c.coords["layer"]) for c in configs)
        n_heads = 1 + max(int(c.coords["head"]) for c in configs)
        by_config = run.by_config
        if any(c.name not in by_config for c in configs) or clean not in by_config:
            return None
        scores = stage_scores(stored_results(run), clean, stage, n_layers, n_heads)
        picked = top_heads(scores, getattr(sizes, stage))
        title = f"{run.name}: {group} — relative change of the correct object's probability; picked heads outlined"
        return charts.head_heatmap(title, scores.numpy(), picked, "(p_patched − p_clean) / p_clean"), title


def expand_circuit_sweep(sweep: CircuitSweep, recipient: str, n_layers: int, n_heads: int) -> list[RunConfig]:
    out = []
    for phase, stage in enumerate(sweep.stages, start=1):
        for layer in range(n_layers):
            for head in range(n_heads):
                spec = PathPatchSpec(stage=stage, layer=layer, head=head, clean=sweep.clean, sizes=sweep.sizes)
                coords = {"stage": stage, "layer": str(layer), "head": str(head)}
                out.append(
                    RunConfig(
                        stage_config_name(stage, layer, head),
                        f"{sweep.group}: {stage.replace('_', ' ')}",
                        recipient,
                        (),
                        coords,
                        spec,
                        kind="path_patching",
                        phase=phase,
                    )
                )
    if len(sweep.stages) == len(GROUPS):
        for seed in [None, *range(1, sweep.random + 1)]:
            name = "circuit" if seed is None else f"random circuit {seed}"
            spec = CircuitSpec(
                circuit="discovered", clean=sweep.clean, sizes=sweep.sizes, seed=seed, mean_prompts=sweep.mean_prompts
            )
            out.append(
                RunConfig(
                    name,
                    "faithfulness",
                    recipient,
                    (),
                    {"circuit": "random" if seed else "found"},
                    spec,
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
