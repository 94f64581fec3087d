"""``path_patching``: one sender head's path-patching score, a stage of the entity-tracking circuit
(Prakash et al.); the ``et_circuit`` sweep (`graftlens.methods.et_circuit`) makes these configurations.

Stages run phase by phase: value fetchers (senders at the last token, straight to the logits), then
position transmitters (through the value fetchers' queries), position detectors (at the query label,
through the transmitters' values) and structure readers (at the queried box's label, through the
detectors' values). Each stage's receivers are the heads the stage before it picked, read from the
store. The corrupted prompt of each pair is the source; the clean prompt is the one run, and a
head's score is the relative change of the correct object's probability against the ``plain``
configuration (the model without interventions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from graftlens.bounded import BoundedStore
from graftlens.methods.core import resources
from graftlens.methods.core.circuits import (
    GROUP_POSITIONS,
    GROUPS,
    RECEIVER_POINT,
    GroupSizes,
    PathPatchSpec,
    batch_key,
    discovered_circuit,
    pair_inputs,
    plain_of,
    stage_scores,
    stored_results,
)
from graftlens.methods.core.parts import RecipeError, RunConfig
from graftlens.methods.core.registry import Execution, Method, register

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig


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

    def readout(self, config: RunConfig[PathPatchSpec], execution: Execution) -> LastLogits:
        spec = config.method
        from graftlens.eval.batching import pad_id_of
        from graftlens.interventions.paths import PreparedBatch, Receiver, prepared_bytes

        model = execution.models[config.model]
        a = model.adapter
        pad = pad_id_of(model.tokenizer)
        stage_index = GROUPS.index(spec.stage)
        position = GROUP_POSITIONS[spec.stage]
        receivers: list[Receiver] | str = "logits"
        receiver_positions = "LT"
        if stage_index > 0:
            previous = GROUPS[stage_index - 1]
            if execution.results is None:
                raise RecipeError(f"path patching stage {spec.stage!r} needs the stored results of {previous!r}")
            chosen = execution.state(
                resources.DiscoveredCircuit(spec.plain, spec.sizes, a.n_layers, a.n_heads, stage_index),
                lambda: discovered_circuit(execution.results, spec.plain, spec.sizes, a.n_layers, a.n_heads, stage_index),
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
        caches: BoundedStore = execution.state(resources.PathPatchingRuns(config.model), lambda: BoundedStore(2 << 30))

        def run(batch: Prompts) -> torch.Tensor:
            key = (batch_key(batch), spec.stage)
            if key not in caches:  # the clean and corrupted runs and the shared prefixes, once per batch and stage
                inputs = pair_inputs(batch, pad)
                prepared = PreparedBatch(
                    model, inputs, sender_positions=position, receivers=receivers, receiver_positions=receiver_positions
                )
                caches.put(key, prepared, prepared_bytes(prepared))
            return caches.get(key).logits((spec.layer, spec.head))

        return run

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        from graftlens import charts
        from graftlens.interventions.paths import top_heads

        spec = configs[0].method or {}
        stage, clean = spec["stage"], plain_of(spec)
        sizes = GroupSizes(**spec.get("sizes", {}))
        n_layers = 1 + max(int(c.coords["layer"]) for c in configs)
        n_heads = 1 + max(int(c.coords["head"]) for c in configs)
        by_config = run.by_config
        if any(c.name not in by_config for c in configs) or clean not in by_config:
            return None
        scores = stage_scores(stored_results(run), clean, stage, n_layers, n_heads)
        picked = top_heads(scores, getattr(sizes, stage))
        title = f"{run.name}: {panel} — relative change of the correct object's probability; picked heads outlined"
        return charts.head_heatmap(title, scores.numpy(), picked, "(p_patched − p_clean) / p_clean"), title
