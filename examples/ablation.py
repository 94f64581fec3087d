"""``ablation``: zero one stream point of every layer at some positions, one layer at a time.

An example of adding a method: copy this file into ``src/graftlens/methods/`` and recipes accept
``- {kind: ablation, point: mlp_out, positions: subject}`` under ``sweeps:``; the runner scores
it, the report draws it (the default bar chart), and nothing else in graftlens changes. The
test ``tests/test_adding_a_method.py`` does exactly that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import field_validator

from graftlens.eval.batching import Prompts
from graftlens.eval.scoring import LastLogits
from graftlens.interventions import edit
from graftlens.methods.core.parts import RunConfig, Strict, Sweep, check_positions
from graftlens.methods.core.registry import Execution, Method, register
from graftlens.models import LoadedModel, run_logits
from graftlens.positions import resolve_positions


class AblationSpec(Strict):
    """One configuration: which point to zero, where (stored with the run's results)."""

    kind: Literal["ablation"] = "ablation"
    point: str  # e.g. "mlp_out.3"
    positions: str = "all"

    _positions = field_validator("positions")(check_positions)


class AblationSweep(Sweep):
    """The recipe part under ``sweeps:``; ``kind`` tells it apart from every other method's."""

    kind: Literal["ablation"]
    point: Literal["attn_out", "mlp_out"] = "mlp_out"
    positions: str = "all"
    panel: str = "ablation"

    _positions = field_validator("positions")(check_positions)


@register
class ZeroAblation(Method[AblationSpec]):
    kind = "ablation"
    sweep = AblationSweep
    needs_depth = True  # one configuration per layer: expand needs the model's depth

    def expand(self, sweep: AblationSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        assert n_layers is not None
        return [
            RunConfig(
                name=f"ablate {sweep.point}.{layer} @ {sweep.positions}",
                panel=sweep.panel,
                model=recipient,
                coords={"layer": str(layer)},
                method=AblationSpec(point=f"{sweep.point}.{layer}", positions=sweep.positions),
                kind=self.kind,
            )
            for layer in range(n_layers)
        ]

    def check(self, config: RunConfig[AblationSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        return [config.method.positions]  # resolved on every prompt before anything is scored

    def readout(self, config: RunConfig[AblationSpec], execution: Execution) -> LastLogits:
        model, spec = execution.models[config.model], config.method

        def run(batch: Prompts) -> torch.Tensor:
            where = resolve_positions(spec.positions, batch.attention_mask, batch.spans)[..., None]  # [batch, pos, 1]
            with edit(model, {spec.point: lambda x: x.masked_fill(where, 0.0)}):
                return run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)[:, -1]  # [batch, vocab]

        return run
