"""``dcm``: which heads of each circuit group carry which information (desiderata-based component
masking, Prakash et al. after Davies et al.).

For each group and each desideratum (``position``, ``object``, ``box_label``; see
`graftlens.data.entity_tracking`), a sigmoid mask over the group's heads is trained on
desideratum pairs of its own (another seed than the scored prompts) with an L1 term; the heads
whose mask ends above 0.5 are then patched from each scored prompt's source into its clean run at
the group's positions. Every configuration is scored on every desideratum's prompts (the
recipe's data), so the report shows how well a mask trained for one desideratum realises each.
Each row stores the learned mask values (``mask L.H`` columns) with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from graftlens.configfiles import Seed
from graftlens.errors import GraftlensError
from graftlens.methods.core import resources
from graftlens.methods.core.circuits import GROUP_POSITIONS, GROUPS, GroupName, check_fixed_positions, load_circuit, pair_inputs
from graftlens.methods.core.parts import RecipeError, RunConfig, Strict, Sweep, shared_fields
from graftlens.methods.core.registry import Execution, Method, Table, register
from graftlens.results.metrics import estimate

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig

Desideratum = Literal["position", "object", "box_label"]


class DcmTraining(Strict):
    """What a dcm sweep and each of its configurations share: the circuit and how masks are trained."""

    circuit: str
    """the circuit: `"shipped:NAME"` or a `circuit.json` an `et-circuit` report wrote"""
    boxes: int = Field(7, ge=2)
    """box count of the training pairs"""
    train_examples: int = Field(120, ge=1, le=100_000)
    """training pairs per desideratum"""
    epochs: int = Field(10, ge=1, le=10_000)
    """passes over the training pairs"""
    lam: float = Field(0.01, ge=0)
    """λ of the L1 term (Prakash et al.: 0.01)"""
    lr: float = Field(0.1, gt=0)
    """Adam's learning rate (Prakash et al.: 0.1)"""
    batch_size: int = Field(24, ge=1)
    """pairs per Adam step"""
    init: float = 0.0
    """the mask logits' start (0: sigmoid 0.5, every head undecided)"""
    seed: Seed = 0
    """the seed of the training pairs and the mask"""
    half: Literal["all", "train", "test"] = "test"
    """which half of the entity-tracking vocabulary the prompts draw from: `train`, `test` or `all`"""


class DcmSpec(DcmTraining):
    kind: Literal["dcm"] = "dcm"
    head_group: GroupName
    desideratum: Desideratum | None  # None: every head of the group patched (no mask learned)


class DcmSweep(DcmTraining, Sweep):
    """A mask per (head group, desideratum), plus each head group patched whole."""

    kind: Literal["dcm"]
    renamed: ClassVar[dict[str, str]] = {"groups": "head_groups"}

    head_groups: list[GroupName] = Field(list(GROUPS), min_length=1)
    """the circuit's head groups a mask is learned over"""
    desiderata: list[Desideratum] = Field(["position", "object", "box_label"], min_length=1)
    """what the masked heads should carry: `position`, `object`, `box_label`"""
    panel: str = "dcm"
    """the report's figure its configurations are drawn in"""

    def check_data(self, data: dict) -> None:
        pairs = (data.get("entity_tracking") or {}).get("pairs")
        if not pairs or "corrupted" in pairs:
            raise ValueError(
                "dcm sweep: the scored prompts must be desideratum pairs: data: {entity_tracking: {pairs: "
                f"[position, object, box_label]}} (got {pairs or 'no entity-tracking prompts'})"
            )


def mask_key(layer: int, head: int) -> str:
    return f"mask {layer}.{head}"


@register
class DesiderataMasking(Method[DcmSpec]):
    """Bars: each configuration's accuracy on each desideratum's prompts."""

    kind = "dcm"
    sweep = DcmSweep

    def expand(self, sweep: DcmSweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        out = []
        common = shared_fields(sweep, DcmTraining)
        for group in sweep.head_groups:
            for desideratum in [None, *sweep.desiderata]:
                spec = DcmSpec(head_group=group, desideratum=desideratum, **common)
                label = group.replace("_", " ")
                name = f"{label}: all heads" if desideratum is None else f"{label}: mask for {desideratum}"
                coords = {"head_group": group, "desideratum": desideratum or "all heads"}
                out.append(RunConfig(name=name, panel=sweep.panel, model=recipient, coords=coords, method=spec, kind=self.kind))
        return out

    def check(self, config: RunConfig[DcmSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        a = models[config.model].adapter
        circuit = load_circuit(spec.circuit)
        circuit.check(a.n_layers, a.n_heads)
        check_fixed_positions(circuit, [spec.head_group], spec.circuit, "dcm")
        from graftlens.data.entity_tracking import check_boxes, vocabulary

        try:  # the training pairs, made in the readout, are made of this many boxes
            check_boxes(vocabulary(models[config.model].tokenizer, spec.half), spec.boxes, spec.half)
        except GraftlensError as exc:
            raise RecipeError(f"dcm boxes: {exc}") from None
        if not circuit.group(spec.head_group).heads:
            raise RecipeError(f"circuit {spec.circuit}: group {spec.head_group!r} has no heads to mask")
        return [GROUP_POSITIONS[spec.head_group]]

    def readout(self, config: RunConfig[DcmSpec], execution: Execution) -> LastLogits:
        spec = config.method
        import torch

        from graftlens.eval.batching import pad_id_of
        from graftlens.interventions.circuits import CircuitError
        from graftlens.interventions.masks import masked_patch_logits

        model = execution.models[config.model]
        pad = pad_id_of(model.tokenizer)
        try:
            heads = list(load_circuit(spec.circuit).group(spec.head_group).heads)
        except CircuitError as exc:
            raise RecipeError(f"configuration {config.name!r}: {exc}") from None
        position = GROUP_POSITIONS[spec.head_group]
        if spec.desideratum is None:
            chosen = heads
        else:
            learned = execution.state(resources.DcmMask(config.model, spec), lambda: _train(model, spec, heads, pad))
            chosen = learned.selected
            execution.note(config.name, {mask_key(la, h): round(float(v), 6) for (la, h), v in zip(heads, learned.values)})

        def run(batch: Prompts) -> torch.Tensor:
            from graftlens.interventions.masks import DesideratumBatch

            inputs = pair_inputs(batch, pad)
            if not chosen:
                from graftlens.models.run import run_logits

                return run_logits(model, inputs.clean_ids, inputs.clean_mask, last_only=True)[:, -1]
            return masked_patch_logits(
                model, DesideratumBatch(inputs, batch.target_ids), chosen, torch.ones(len(chosen)), position
            )

        return run

    def tables(self, run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
        """Accuracy of each configuration on each desideratum's prompts, and the heads each mask kept."""
        by_config = run.by_config
        desiderata = list(dict.fromkeys(r.template for r in run.rows))
        rows = []
        for c in configs:
            if c.name not in by_config:
                continue
            per = {d: [r for r in by_config[c.name] if r.template == d] for d in desiderata}
            rows.append((c.name, [estimate(per[d], "top1", run.n_boot, run.seed) if per[d] else None for d in desiderata]))
        return [
            Table(
                f"{panel}: accuracy on each desideratum's prompts (heads patched from the source)",
                "configuration",
                desiderata,
                rows,
            )
        ]

    def files(self, run: RunData, panel: str, configs: list[StoredConfig]) -> dict[str, str]:

        masks = {c.name: _mask_values(run, c) for c in configs if _mask_values(run, c)}
        return {"dcm_masks.json": json.dumps(masks, indent=2, sort_keys=True) + "\n"} if masks else {}


def _mask_values(run: RunData, config: StoredConfig) -> dict[str, float]:
    rows = run.by_config.get(config.name, [])
    return {k: v for k, v in (rows[0].extra.items() if rows else []) if k.startswith("mask ")}


def _train(model: LoadedModel, spec: DcmSpec, heads: list[tuple[int, int]], pad: int):
    """The mask of ``spec``'s group for its desideratum, trained on pairs of another seed than the scored ones."""
    from graftlens.data.entity_tracking import make_pairs, tokenize_entity_tracking
    from graftlens.eval.batching import batches
    from graftlens.interventions.masks import DcmSettings, DesideratumBatch, learn_mask

    assert spec.desideratum is not None
    examples = make_pairs(
        model.tokenizer, spec.desideratum, spec.train_examples, spec.boxes, seed=spec.seed + 1_000, half=spec.half
    )
    prompts = tokenize_entity_tracking(examples, model.tokenizer)
    train = []
    for batch in batches(prompts, spec.batch_size, pad):
        batch = batch.to(model.device)
        train.append(DesideratumBatch(pair_inputs(batch, pad), batch.target_ids))
    settings = DcmSettings(lam=spec.lam, lr=spec.lr, epochs=spec.epochs, init=spec.init, seed=spec.seed)
    return learn_mask(model, train, heads, settings, GROUP_POSITIONS[spec.head_group])
