"""The one registry of methods: each kind of experiment is a :class:`Method` in a module of its own.

A method owns, for its kind:

- its recipe part (``sweep``, a :class:`~graftlens.methods.base.Sweep` with a ``kind`` literal) and
  how that part expands into :class:`~graftlens.methods.base.RunConfig` s (:meth:`Method.expand`);
- the checks of one configuration against the models, before anything is scored
  (:meth:`Method.check`, which also names the position selectors to try on every prompt);
- its readout: ``batch → last-position logits`` (:meth:`Method.readout`);
- its figure and tables in the report (:meth:`Method.figure`, :meth:`Method.tables`).

Recipes, the runner, the checks and the report find methods here by ``kind``, never by looking
at field names. Adding a method is adding one module to this package that calls
:func:`register`; :mod:`graftlens.methods` imports every module of the package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from graftlens.errors import GraftlensError, RecipeError
from graftlens.methods.base import ModelShape, RunConfig, Sweep, check_fits
from graftlens.positions import resolve_positions
from graftlens.results.metrics import Estimate

if TYPE_CHECKING:  # methods register (and recipes validate) without torch; readouts import it when they run
    from graftlens.eval.batching import PromptBatch
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig


Keep = Callable[[str, Mapping[str, Any], Mapping[str, str]], None]  # (file name, tensors, metadata)


@dataclass
class Context:
    """What readouts share across the configurations of one run: the loaded models, and state a
    method keeps between its configurations (e.g. donor activations), by key."""

    models: Mapping[str, LoadedModel]
    # ``results(config names) -> {config: {example: target probability}}``: what the store holds
    # (every configuration of an earlier phase is complete when a later phase starts).
    results: Callable[[Sequence[str]], dict[str, dict[str, float]]] | None = None
    # Every batch of the run, in scoring order (for statistics over the dataset: mean-ablation means).
    batches: Sequence[PromptBatch] = ()
    # ``keep(file name, tensors, metadata)``: how a method keeps tensors it computed beside the
    # store, merged into that file of the run directory by whoever writes the run (the runner, or
    # a distributed run's driver); None: not kept.
    keep: Keep | None = None
    # Every configuration of the run (a readout may compute its siblings' results in one pass).
    configs: Sequence[RunConfig] = ()
    # What the recipe asks beyond next-token scores, of the methods that measure it (weight
    # grafting, the plain model): each target's whole log-probability, teacher-forced after its
    # prompt; and a greedy continuation of this many tokens.
    target_logprob: bool = False
    generate: int = 0
    _state: dict[str, Any] = field(default_factory=dict)
    _batch_state: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)
    _extras: dict[str, dict[str, float]] = field(default_factory=dict)

    def state(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._state:
            self._state[key] = make()
        return self._state[key]

    def for_batch(self, key: str, batch: PromptBatch, make: Callable[[], Any], variant: Any = None) -> Any:
        """What configurations share for one batch: ``make()`` once per (``key``, batch,
        ``variant``); one value per ``key`` is kept, so a new batch or variant drops the old one.

        The runner scores every configuration of a batch before the next batch, so a value shared
        by configurations expanded next to each other is made once."""
        ids = tuple(p.id for p in batch.prompts)
        slot = self._batch_state.get(key)
        if slot is None or slot[0] != ids or slot[1] != variant:
            self._batch_state.pop(key, None)  # free the old value before making the new one
            slot = (ids, variant, make())
            self._batch_state[key] = slot
        return slot[2]

    def note(self, config: str, values: Mapping[str, float]) -> None:
        """Measures stored with every result row of ``config`` (e.g. a learned mask), so the
        report can show them from the store alone."""
        self._extras.setdefault(config, {}).update(values)

    def extras(self, config: str) -> dict[str, float]:
        return dict(self._extras.get(config, {}))


def unmodified_run(context: Context, model_name: str, batch: PromptBatch):
    """The batch's plain run of ``model_name``, kept to be continued
    (:class:`~graftlens.interventions.continuation.CachedRun`): made once per batch and shared by
    every configuration of the batch that intervenes on that model."""
    from graftlens.interventions.continuation import CachedRun

    model = context.models[model_name]
    return context.for_batch(
        f"unmodified run of {model_name}", batch, lambda: CachedRun(model, batch.input_ids, batch.attention_mask)
    )


@dataclass(frozen=True)
class Table:
    """A table of the report: ``rows`` of (label, one estimate per column), values to ``digits``."""

    title: str
    corner: str
    columns: list[str]
    rows: list[tuple[str, list[Estimate | int | str | None]]]
    digits: int = 3


SpecT = TypeVar("SpecT")


class Method(Generic[SpecT]):
    """One kind of experiment. Subclass it in a module of this package and decorate with :func:`register`.

    A method is generic in the spec of its configurations (``class AttentionKnockout(Method[KnockoutSpec])``):
    its ``check`` and ``readout`` receive ``RunConfig[KnockoutSpec]``, whose ``method`` is that spec
    (the registry hands a configuration only to the method of its kind)."""

    kind: ClassVar[str]
    sweep: ClassVar[type[Sweep] | None] = None  # its part under `sweeps:` (None: configurations written out)
    needs_depth: ClassVar[bool] = False  # expansion needs the model's number of layers
    needs_heads: ClassVar[bool] = False  # expansion also needs its heads per layer (``n_heads``)

    def expand(self, sweep: Sweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        """The configurations of one sweep. ``n_layers`` and ``n_heads`` (heads per layer) are the
        recipient's, or None before the models are loaded: a method that ``needs_depth`` (or
        ``needs_heads``) is then not asked."""
        raise NotImplementedError

    def check(self, config: RunConfig[SpecT], models: Mapping[str, LoadedModel]) -> list[str]:
        """Raise a :class:`GraftlensError` if ``config`` does not fit the models; return the
        position selectors it uses, which are then resolved on every prompt."""
        raise NotImplementedError

    def readout(self, config: RunConfig[SpecT], context: Context) -> LastLogits:
        """``batch → logits[batch, vocab]`` at each prompt's last position."""
        raise NotImplementedError

    def figure(self, run: RunData, group: str, configs: list[StoredConfig]):
        """``(Figure, title)`` of one group of this method's configurations, or None for none.

        The default: one bar per test template per configuration, the plain configurations as
        reference lines (:func:`graftlens.methods.figures.bar_chart_of`)."""
        from graftlens.methods.figures import bar_chart_of

        return bar_chart_of(run, group, configs)

    def tables(self, run: RunData, group: str, configs: list[StoredConfig]) -> list[Table]:
        """Extra tables of one group in the report (none by default)."""
        return []

    def files(self, run: RunData, group: str, configs: list[StoredConfig]) -> dict[str, str]:
        """Text files the report writes next to itself for one group (``{name: text}``; none by
        default): what a later recipe can read back, such as a found circuit."""
        return {}

    #: Whether the report lists the method's configurations one by one in its summary tables
    #: (a sweep of hundreds of heads is shown as its heat map instead).
    summarised: ClassVar[bool] = True


_METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` the method of its ``kind``."""
    if cls.kind in _METHODS and type(_METHODS[cls.kind]) is not cls:
        raise RecipeError(f"two methods of kind {cls.kind!r}: {type(_METHODS[cls.kind]).__name__} and {cls.__name__}")
    _METHODS[cls.kind] = cls()
    return cls


def method_for(kind: str) -> Method:
    try:
        return _METHODS[kind]
    except KeyError:
        raise RecipeError(f"unknown method kind {kind!r}; known: {', '.join(sorted(_METHODS))}") from None


def methods() -> list[Method]:
    return list(_METHODS.values())


def sweep_types() -> tuple[type[Sweep], ...]:
    """Every method's recipe part under ``sweeps:``, in registration order."""
    return tuple(m.sweep for m in _METHODS.values() if m.sweep is not None)


def check_config(config: RunConfig, models: Mapping[str, LoadedModel], batches: Sequence[PromptBatch]) -> None:
    """``config`` fits its models and every prompt, or one :class:`RecipeError` naming it."""
    try:
        if config.method is not None:
            check_fits(config.method, ModelShape.of(config.model, models[config.model]), "")
        for selector in method_for(config.kind).check(config, models):
            for batch in batches:
                resolve_positions(selector, batch.attention_mask, batch.spans)
    except GraftlensError as exc:
        raise RecipeError(f"configuration {config.name!r}: {exc}") from None
