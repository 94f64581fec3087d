"""What the weight-grafting methods share: checks of graft rules, and the grafted readout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from graftlens.graft.rules import Graft, rule_sites, touched_modules
from graftlens.methods.base import RunConfig, Sweep, check_components, check_positions
from graftlens.methods.registry import Context, Method

if TYPE_CHECKING:  # imported where they run: a method module loads without torch (recipes are read with it)
    import torch

    from graftlens.eval.batching import PromptBatch
    from graftlens.eval.scoring import LastLogits
    from graftlens.graft.prefix import PrefixCaches
    from graftlens.models import LoadedModel


def grafted_last_logits(base, donors, rules: list[Graft], prefixes: PrefixCaches | None = None, name: str = "") -> LastLogits:
    """Last-position logits of ``base`` with ``rules`` grafting ``donors`` in.

    The donors' weights are prepared once, not per batch; named spans in the rules (``FE``,
    ``title``, ...) come from each batch's prompts. Unless a rule grafts the unembedding, it is
    applied to the last position only, as in the plain model's path. With ``prefixes``, a batch
    whose rules claim only its last token continues the recipient's shared prefix cache (keyed by
    ``name`` and the batch's prompts) instead of running every position again."""
    from graftlens.graft.engine import Grafter
    from graftlens.graft.prefix import claims_only_last, continue_last
    from graftlens.models.loading import as_loaded
    from graftlens.models.run import run_logits

    loaded = as_loaded(base)
    grafter = Grafter(loaded, donors, rules)
    head_paths = {s.path for s in loaded.adapter.sites("lm_head")}
    last_only = not head_paths & set(touched_modules(loaded.adapter, rules))

    def run(batch: PromptBatch) -> torch.Tensor:
        batch = batch.to(loaded.device)
        if prefixes is not None and claims_only_last(rules, batch.attention_mask, batch.spans):
            key = (name, tuple(p.id for p in batch.prompts))
            cache = prefixes.get(key, loaded, batch.input_ids, batch.attention_mask)
            with grafter.on(batch.spans):
                return continue_last(loaded, cache, batch.input_ids, batch.attention_mask)
        with grafter.on(batch.spans):
            return run_logits(loaded, batch.input_ids, batch.attention_mask, last_only)[:, -1]

    return run


class GraftingMethod(Method):
    """A method whose configurations are graft rules (or none: the model as it is)."""

    def check(self, config: RunConfig, models: Mapping[str, LoadedModel]) -> list[str]:
        """Every rule names real components and layers, and every donor has the recipient's
        architecture and the shapes of every tensor the rules graft (no copy is made)."""
        from graftlens.graft.donors import donor_weights

        recipient = models[config.model]
        rules = config.rules()
        for rule in rules:
            rule_sites(recipient.adapter, rule)
        for donor in dict.fromkeys(g.donor for g in config.grafts):
            paths = touched_modules(recipient.adapter, [r for r in rules if r.donor == donor])
            donor_weights(donor, models[donor], recipient.model, paths)
        return [g.positions for g in config.grafts]

    def readout(self, config: RunConfig, context: Context) -> LastLogits:
        from graftlens.eval.scoring import plain_last_logits

        model = context.models[config.model]
        if not config.grafts:
            return plain_last_logits(model.model)
        from graftlens.graft.prefix import PrefixCaches

        donors = {g.donor: context.models[g.donor] for g in config.grafts}
        prefixes = context.state("prefixes", PrefixCaches)  # shared by every configuration of the run
        return grafted_last_logits(model, donors, config.rules(), prefixes, config.model)


class ComponentListSweep(Sweep):
    """What the component and layer-window sweeps share: a donor, positions, component groups."""

    donor: str
    recipient: str | None = None
    positions: str = "LT"
    components: list[str] = Field(min_length=1)

    _positions = field_validator("positions")(check_positions)

    @field_validator("components")
    @classmethod
    def _comps(cls, v: list[str]) -> list[str]:
        for c in v:
            check_components(c)
        return v
