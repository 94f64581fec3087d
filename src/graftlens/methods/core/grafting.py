"""What the weight-grafting methods share: checks of graft rules, and the grafted readout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from graftlens.graft.rules import Graft, rule_sites, touched_modules
from graftlens.methods.core import resources
from graftlens.methods.core.parts import RunConfig, Sweep, check_components, check_positions
from graftlens.methods.core.registry import Execution, Method, method_for

if TYPE_CHECKING:  # imported where they run: a method module loads without torch (recipes are read with it)
    import torch

    from graftlens.eval.batching import ForcedTargets, Prompts
    from graftlens.eval.scoring import LastLogits, Readout
    from graftlens.graft.prefix import PrefixCaches, SharedPrefix
    from graftlens.models import LoadedModel


def grafted_last_logits(
    recipient,
    donors,
    rules: list[Graft],
    prefixes: PrefixCaches | None = None,
    name: str = "",
    target_logprob: bool = False,
    generate: int = 0,
) -> LastLogits:
    """Last-position logits of ``recipient`` with ``rules`` grafting ``donors`` in (a
    `Readout` with ``target_logprob`` or ``generate``).

    The donors' weights are prepared once, not per batch; named spans in the rules (``FE``,
    ``title``, ...) come from each batch's prompts. With ``prefixes``, a batch whose rules claim
    only its last token continues the recipient's shared prefix cache (keyed by ``name`` and the
    batch's prompts) instead of running every position again. With ``target_logprob`` each
    prompt's target is fed after it, continuing the prompt's own call (teacher-forced, grafted as
    new tokens are), and its whole log-probability is read; with ``generate``, the grafted model's
    greedy continuation."""
    from graftlens.eval.batching import with_targets
    from graftlens.eval.scoring import Readout
    from graftlens.graft.engine import Grafter
    from graftlens.graft.prefix import claims_only_last
    from graftlens.models.loading import as_loaded
    from graftlens.models.prefix import continue_and_force
    from graftlens.models.run import run_logits

    loaded = as_loaded(recipient)
    grafter = Grafter(loaded, donors, rules)

    def run(batch: Prompts) -> Readout:
        batch = batch.to(loaded.device)
        forced = with_targets(batch) if target_logprob else None
        prefix = None
        if prefixes is not None and claims_only_last(rules, batch.attention_mask, batch.spans):
            # The plain prefix is made outside the grafter: its last column is not the prompt's LT.
            prefix = prefixes.get((name, tuple(p.id for p in batch.prompts)), loaded, batch.input_ids, batch.attention_mask)
        with grafter.on(batch.spans):
            if prefix is not None:
                readout = forced_readout(*prefix.continued(*forced_inputs(forced)), forced)
            elif forced is not None:
                readout = forced_readout(
                    *continue_and_force(loaded, None, batch.input_ids, batch.attention_mask, *forced_inputs(forced)), forced
                )
            else:
                readout = Readout(run_logits(loaded, batch.input_ids, batch.attention_mask, last_only=True)[:, -1])
        if generate:
            readout.continuation = grafted_continuation(loaded, grafter, batch, generate, prefix)
        return readout

    return run


def forced_inputs(forced: ForcedTargets | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (None, None) if forced is None else (forced.input_ids, forced.attention_mask)


def forced_readout(last: torch.Tensor, more: torch.Tensor | None, forced: ForcedTargets | None) -> Readout:
    """The readout of a pass's last prompt column ``[batch, vocab]`` and the forced target columns
    after it (``[batch, n_target - 1, vocab]``): the target's whole log-probability with a forced target."""
    import torch

    from graftlens.eval.scoring import Readout, target_logprob

    if forced is None:
        return Readout(last)
    columns = last[:, None] if more is None else torch.cat([last[:, None], more], 1)  # [batch, n_target, vocab]
    return Readout(last, target_logprob(columns, forced))


def grafted_continuation(model: LoadedModel, grafter, batch: Prompts, n: int, prefix: SharedPrefix | None) -> torch.Tensor:
    """``LongTensor[batch, n]``: what the grafted model says after each prompt, greedily (continuing
    the plain ``prefix`` when the rules leave its columns the recipient's own)."""
    from graftlens.models.generate import greedy_continuation

    with grafter.on(batch.spans):
        if prefix is not None:
            return prefix.generated(n)
        return greedy_continuation(model, batch.input_ids, batch.attention_mask, n, None)


def shared_prefix_logits(config: RunConfig, siblings: list[RunConfig], execution: Execution, donors, alone) -> LastLogits:
    """``config``'s readout when the grafting configurations of the run share prefixes (a
    `GraftPlan`)."""
    return GraftPlan(config, siblings, execution, donors, alone)


class GraftPlan:
    """``config``'s readout when the grafting configurations of the run (``siblings``) share
    prefixes: on each batch, the configurations whose rules first claim the same column ``c``
    continue one plain prefix of the columns before ``c``, together, as variants of one pass
    (each grafts the rows of its own variant, `graftlens.graft.prefix.variant_rules`), so the
    shared columns are computed once and the donors' weights read once per pass. A configuration
    that claims column 0 (or a batch that is not left-padded) uses ``alone``. A forced target (the
    execution's ``target_logprob``) continues the same pass after the prompts; a continuation
    (``generate``) is generated by the same variants, continuing the same prefix.

    What the siblings share lives in the execution, so each is made once: which siblings graft
    the unembedding, each batch's cuts, each chunk's grafter, its variants' logits."""

    def __init__(self, config: RunConfig, siblings: list[RunConfig], execution: Execution, donors, alone) -> None:
        self.config, self.siblings, self.execution, self.donors, self.alone = config, siblings, execution, donors, alone
        self.model = execution.models[config.model]
        self.family = tuple(c.name for c in siblings)
        # A continuation computes the last columns' logits only: a configuration grafting the
        # unembedding shares a prefix only when its rules claim nothing but the last column.
        self.grafts_head = execution.state(resources.GraftsUnembedding(self.family), self._heads_grafted)

    def _heads_grafted(self) -> set[str]:
        head_paths = {s.path for s in self.model.adapter.sites("lm_head")}
        return {c.name for c in self.siblings if head_paths & set(touched_modules(self.model.adapter, c.rules()))}

    def _cuts(self, mask: torch.Tensor, spans) -> dict[str, int]:
        """Each sibling's first claimed column on this batch (0: it runs alone)."""
        from graftlens.graft.prefix import prefix_cut

        return {c.name: prefix_cut(c.rules(), mask, spans, c.name in self.grafts_head) for c in self.siblings}

    def __call__(self, batch: Prompts) -> Readout:
        from graftlens.eval.scoring import Readout
        from graftlens.models.prefix import VARIANT_ROWS  # read per call: tests set it smaller

        batch = batch.to(self.model.device)
        # Made once per batch for every sibling, not once per sibling for every configuration.
        cut_by_name = self.execution.for_batch(
            resources.PrefixCuts(self.family), batch, lambda: self._cuts(batch.attention_mask, batch.spans)
        )
        cut = cut_by_name[self.config.name]
        if cut == 0:
            return Readout.of(self.alone(batch))
        group = [c for c in self.siblings if cut_by_name[c.name] == cut]
        per_pass = max(1, VARIANT_ROWS // batch.input_ids.shape[0])
        start = group.index(self.config) // per_pass * per_pass
        chunk = group[start : start + per_pass]
        names = tuple(c.name for c in chunk)
        logits, logprobs = self.execution.for_batch(
            resources.GraftedVariants(), batch, lambda: self._variants(chunk, batch, cut), (cut, names)
        )
        v = names.index(self.config.name)
        readout = Readout(logits[:, v], None if logprobs is None else logprobs[:, v])
        if self.execution.measures.generate:
            continuations = self.execution.for_batch(
                resources.GraftedContinuations(), batch, lambda: self._continuations(chunk, batch, cut), (cut, names)
            )
            readout.continuation = continuations[:, v]
        return readout

    def _pass(self, chunk: list[RunConfig], batch: Prompts, cut: int):
        """The chunk's grafter (each configuration grafting its own variant's rows), the plain
        prefix before ``cut``, and the batch's spans once per variant."""
        from graftlens.graft.engine import Grafter
        from graftlens.graft.prefix import variant_rules

        names = tuple(c.name for c in chunk)
        grafter = self.execution.state(
            resources.VariantGrafter(names), lambda: Grafter(self.model, self.donors, variant_rules([c.rules() for c in chunk]))
        )
        key = (self.config.model, tuple(p.id for p in batch.prompts))
        prefix = self.execution.prefixes.get(key, self.model, batch.input_ids, batch.attention_mask, cut)
        spans = batch.spans
        return grafter, prefix, None if spans is None else [s for s in spans for _ in chunk]

    def _variants(self, chunk: list[RunConfig], batch: Prompts, cut: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``([batch, variants, vocab], [batch, variants] or None)``: the chunk's last-position
        logits, and its forced targets' log-probabilities when the execution measures them."""
        from graftlens.eval.batching import with_targets

        grafter, prefix, repeated = self._pass(chunk, batch, cut)
        forced = with_targets(batch) if self.execution.measures.target_logprob else None
        with grafter.on(repeated):
            last, more = prefix.continued_variants(len(chunk), *forced_inputs(forced))
        if forced is None:
            return last, None
        # Rows flattened batch-major (row b of variant v at b * variants + v), each with its prompt's target.
        flat = forced_readout(last.flatten(0, 1), None if more is None else more.flatten(0, 1), _repeated(forced, len(chunk)))
        return last, flat.target_logprob.unflatten(0, last.shape[:2])

    def _continuations(self, chunk: list[RunConfig], batch: Prompts, cut: int) -> torch.Tensor:  # [batch, variants, n]
        grafter, prefix, repeated = self._pass(chunk, batch, cut)
        with grafter.on(repeated):
            return prefix.generated_variants(len(chunk), self.execution.measures.generate)


def _repeated(forced: ForcedTargets, times: int) -> ForcedTargets:
    """``forced`` with each row ``times`` times in a row, as variants are laid out."""
    from graftlens.eval.batching import ForcedTargets

    return ForcedTargets(
        *(t.repeat_interleave(times, 0) for t in (forced.input_ids, forced.attention_mask, forced.target_ids, forced.target_mask))
    )


class GraftingMethod(Method[None]):
    """A method whose configurations are graft rules (or none: the model as it is)."""

    def check(self, config: RunConfig[None], models: Mapping[str, LoadedModel]) -> list[str]:
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

    def readout(self, config: RunConfig[None], execution: Execution) -> LastLogits:

        model = execution.models[config.model]
        prefixes = execution.prefixes  # shared by every configuration of the run
        grafting = [
            c
            for c in execution.configs
            if c.grafts and c.model == config.model and c.phase == config.phase and isinstance(method_for(c.kind), GraftingMethod)
        ]
        asks = {"target_logprob": execution.measures.target_logprob, "generate": execution.measures.generate}
        if not config.grafts:
            # The recipient as it is: a continuation of the prefix its grafted configurations share.
            return grafted_last_logits(model, {}, [], prefixes if grafting else None, config.model, **asks)
        donors = {g.donor: execution.models[g.donor] for g in config.grafts}
        alone = grafted_last_logits(model, donors, config.rules(), prefixes, config.model, **asks)
        siblings = [c for c in grafting if {g.donor for g in c.grafts} == set(donors)]
        if len(siblings) < 2:
            return alone
        return shared_prefix_logits(config, siblings, execution, donors, alone)


class ComponentListSweep(Sweep):
    """What the component and layer-window sweeps share: a donor, positions, component groups."""

    donor: str
    """the model whose weights are grafted"""
    positions: str = "LT"
    """where the donor computes: a position selector (`FE`, `LT`, `subject`, `(FE+LT)^C`, ...)"""
    components: list[str] = Field(min_length=1)
    """components or groups, one configuration each (with each layer group)"""

    _positions = field_validator("positions")(check_positions)

    @field_validator("components")
    @classmethod
    def _comps(cls, v: list[str]) -> list[str]:
        for c in v:
            check_components(c)
        return v
