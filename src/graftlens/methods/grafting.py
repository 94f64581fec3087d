"""What the weight-grafting methods share: checks of graft rules, and the grafted readout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from graftlens.graft.rules import Graft, rule_sites, touched_modules
from graftlens.methods.base import RunConfig, Sweep, check_components, check_positions
from graftlens.methods.registry import Context, Method, method_for

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


VARIANT_ROWS = 256  # rows of one pass of configurations run as variants (prompts × configurations)


def shared_prefix_logits(config: RunConfig, siblings: list[RunConfig], context: Context, donors, prefixes, alone) -> LastLogits:
    """``config``'s readout when the grafting configurations of the run share prefixes: on each
    batch, the configurations whose rules first claim the same column ``c`` continue one plain
    prefix of the columns before ``c``, together, as variants of one pass (each grafts the rows of
    its own variant, :func:`graftlens.graft.prefix.variant_rules`), so the shared columns are
    computed once and the donors' weights read once per pass. A configuration that claims column 0
    (or a batch that is not left-padded) uses ``alone``."""
    from graftlens.graft.engine import Grafter
    from graftlens.graft.prefix import continue_variants, first_claimed_column, variant_rules

    model = context.models[config.model]
    family = tuple(c.name for c in siblings)

    def heads_grafted() -> set[str]:
        head_paths = {s.path for s in model.adapter.sites("lm_head")}
        return {c.name for c in siblings if head_paths & set(touched_modules(model.adapter, c.rules()))}

    # A continuation computes the last column's logits only: a configuration grafting the
    # unembedding shares a prefix only when its rules claim nothing but the last column.
    grafts_head = context.state(("grafts the unembedding", family), heads_grafted)

    def cuts(mask: torch.Tensor, spans) -> dict[str, int]:
        """Each sibling's first claimed column on this batch (0: it runs alone)."""
        width = mask.shape[1]
        out = {}
        for c in siblings:
            cut = min(first_claimed_column(c.rules(), mask, spans), width - 1)
            out[c.name] = 0 if c.name in grafts_head and cut < width - 1 else cut
        return out

    def run(batch: PromptBatch) -> torch.Tensor:
        batch = batch.to(model.device)
        mask, spans = batch.attention_mask, batch.spans
        # Made once per batch for every sibling, not once per sibling for every configuration.
        cut_by_name = context.for_batch("prefix cuts", batch, lambda: cuts(mask, spans), family)
        cut = cut_by_name[config.name]
        if cut == 0:
            return alone(batch)
        group = [c for c in siblings if cut_by_name[c.name] == cut]
        per_pass = max(1, VARIANT_ROWS // batch.input_ids.shape[0])
        start = group.index(config) // per_pass * per_pass
        chunk = group[start : start + per_pass]
        names = tuple(c.name for c in chunk)

        def compute() -> torch.Tensor:  # [batch, variants, vocab]
            grafter = context.state(("variant grafter", names),
                                    lambda: Grafter(model, donors, variant_rules([c.rules() for c in chunk])))  # fmt: skip
            cache = prefixes.get((config.model, tuple(p.id for p in batch.prompts)), model, batch.input_ids, mask, cut)
            repeated = None if spans is None else [s for s in spans for _ in chunk]
            with grafter.on(repeated):
                return continue_variants(model, cache, batch.input_ids, mask, len(chunk))

        return context.for_batch("grafted variants", batch, compute, (cut, names))[:, names.index(config.name)]

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
        from graftlens.graft.prefix import PrefixCaches

        model = context.models[config.model]
        prefixes = context.state("prefixes", PrefixCaches)  # shared by every configuration of the run
        grafting = [c for c in context.configs if c.grafts and c.model == config.model and c.phase == config.phase
                    and isinstance(method_for(c.kind), GraftingMethod)]  # fmt: skip
        if not config.grafts:
            # The recipient as it is: a continuation of the prefix its grafted configurations share.
            return plain_last_logits(model.model) if not grafting else grafted_last_logits(model, {}, [], prefixes, config.model)
        donors = {g.donor: context.models[g.donor] for g in config.grafts}
        alone = grafted_last_logits(model, donors, config.rules(), prefixes, config.model)
        siblings = [c for c in grafting if {g.donor for g in c.grafts} == set(donors)]
        if len(siblings) < 2:
            return alone
        return shared_prefix_logits(config, siblings, context, donors, prefixes, alone)


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
