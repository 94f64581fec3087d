"""The execution of one run, as its readouts see it: what is computed, apart from how fast.

The runner owns one `Execution` per run (or per Ray worker) and hands it to every
readout. It holds three things, kept apart:

- the run's inputs (read only): the loaded ``models``, every ``batch`` in scoring order, every
  configuration, the stored ``results`` of earlier phases, and the `Measures` the recipe
  asks for beyond next-token scores;
- the fast paths and what they keep between configurations: the batch's plain run, continued by
  every configuration that intervenes on the same model (`Execution.plain_run`), the shared
  KV prefixes of weight grafting (`Execution.prefixes`), values one batch's configurations
  share (`Execution.for_batch`, e.g. a variant pass) and a method's own state between its
  configurations (`Execution.state`, e.g. donor activations);
- the side channel of what readouts report besides logits: measures stored with every row of a
  configuration (`Execution.note`) and tensors kept beside the store (`Execution.keep`).

No public intervention or grafting function takes a cache, a prefix or a pass size: the fast
paths are objects this class owns (a plain run, a shared prefix) and their methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graftlens.methods.core import resources

if TYPE_CHECKING:
    from graftlens.eval.batching import Prompts
    from graftlens.graft.prefix import PrefixCaches
    from graftlens.interventions.continuation import CachedRun
    from graftlens.methods.core.parts import RunConfig
    from graftlens.models import LoadedModel

Keep = Callable[[str, Mapping[str, Any], Mapping[str, str]], None]  # (file name, tensors, metadata)
Results = Callable[[Sequence[str]], dict[str, dict[str, float]]]  # config names -> {config: {example: p}}


@dataclass(frozen=True)
class Measures:
    """What a recipe's ``eval`` asks beyond next-token scores, of the methods that measure it
    (weight grafting and the plain model): each target's whole log-probability, teacher-forced
    after its prompt; and a greedy continuation of ``generate`` tokens."""

    target_logprob: bool = False
    generate: int = 0


class Execution:
    """One run's inputs, fast paths and side channel, handed by the runner to every readout."""

    def __init__(
        self,
        models: Mapping[str, LoadedModel],
        *,
        configs: Sequence[RunConfig] = (),
        batches: Sequence[Prompts] = (),
        results: Results | None = None,
        measures: Measures = Measures(),
        keep: Keep | None = None,
    ):
        self.models = models
        self.configs = configs  # every configuration of the run (a readout may score its siblings in one pass)
        self.batches = batches  # every batch, in scoring order (statistics over the data: mean-ablation means)
        # ``results(config names)``: what the store holds; every configuration of an earlier phase
        # is complete when a later phase starts.
        self.results = results
        self.measures = measures
        # ``keep(file name, tensors, metadata)``: tensors a method keeps beside the store, merged into
        # that file of the run directory by whoever writes the run (None: not kept).
        self.keep = keep
        self._state: dict[resources.ResourceKey, Any] = {}
        self._batch_state: dict[resources.ResourceKey, tuple[Any, Any, Any]] = {}
        self._notes: dict[str, dict[str, float]] = {}

    # ---- fast paths and what they keep ------------------------------------------------------

    def state(self, key: resources.ResourceKey, make: Callable[[], Any]) -> Any:
        """A value kept for the whole run under ``key`` (`resources`): ``make()`` on first use."""
        _check_key(key)
        if key not in self._state:
            self._state[key] = make()
        return self._state[key]

    def for_batch(self, key: resources.ResourceKey, batch: Prompts, make: Callable[[], Any], variant: Any = None) -> Any:
        """What configurations share for one batch: ``make()`` once per (``key``, batch,
        ``variant``); one value per ``key`` is kept, so a new batch or variant drops the old one.

        The runner scores every configuration of a batch before the next batch, so a value shared
        by configurations expanded next to each other is made once."""
        _check_key(key)
        ids = tuple(p.id for p in batch.prompts)
        slot = self._batch_state.get(key)
        if slot is None or slot[0] != ids or slot[1] != variant:
            self._batch_state.pop(key, None)  # free the old value before making the new one
            slot = (ids, variant, make())
            self._batch_state[key] = slot
        return slot[2]

    def plain_run(self, model_name: str, batch: Prompts) -> CachedRun:
        """The batch's plain run of ``model_name``, kept to be continued
        (`CachedRun`): made once per batch and
        shared by every configuration of the batch that intervenes on that model."""
        from graftlens.interventions.continuation import CachedRun

        model = self.models[model_name]
        return self.for_batch(
            resources.PlainRun(model_name), batch, lambda: CachedRun(model, batch.input_ids, batch.attention_mask)
        )

    @property
    def prefixes(self) -> PrefixCaches:
        """The recipients' shared KV prefixes (weight grafting), for every configuration of the run."""
        from graftlens.graft.prefix import PrefixCaches

        return self.state(resources.SharedPrefixes(), PrefixCaches)

    # ---- the side channel ----------------------------------------------------------------------

    def note(self, config: str, values: Mapping[str, float]) -> None:
        """Measures stored with every result row of ``config`` (e.g. a learned mask), so the
        report can show them from the store alone."""
        self._notes.setdefault(config, {}).update(values)

    def extras(self, config: str) -> dict[str, float]:
        """What `note` recorded for ``config``."""
        return dict(self._notes.get(config, {}))


def _check_key(key: object) -> None:
    """Only a resource key (a frozen dataclass of `resources`) names what a run keeps."""
    if not isinstance(key, resources.ResourceKey):
        raise TypeError(f"an execution resource is named by a ResourceKey (graftlens.methods.core.resources), not {key!r}")
