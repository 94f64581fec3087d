"""The one registry of methods: each kind of experiment is a `Method` in a module of its own.

A method owns, for its kind:

- its recipe part (``sweep``, a `Sweep` with a ``kind`` literal) and
  how that part expands into `RunConfig` s (`Method.expand`);
- the checks of one configuration against the models, before anything is scored
  (`Method.check`, which also names the position selectors to try on every prompt);
- its readout: ``batch → last-position logits`` (`Method.readout`);
- its figure and tables in the report (`Method.figure`, `Method.tables`).

Recipes, the runner, the checks and the report find methods here by ``kind``, never by looking
at field names. Adding a method is adding one module to this package that calls
`register`; `graftlens.methods` imports every module of the package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic

from graftlens.errors import GraftlensError, RecipeError
from graftlens.methods.core.execution import Execution
from graftlens.methods.core.parts import ModelShape, RunConfig, SpecT, Sweep, check_fits
from graftlens.positions import resolve_positions
from graftlens.results.metrics import Estimate

if TYPE_CHECKING:  # methods register (and recipes validate) without torch; readouts import it when they run
    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig


@dataclass(frozen=True)
class Table:
    """A table of the report: ``rows`` of (label, one estimate per column), values to ``digits``."""

    title: str
    corner: str
    columns: list[str]
    rows: list[tuple[str, list[Estimate | int | str | None]]]
    digits: int = 3


class Method(Generic[SpecT]):
    """One kind of experiment. Subclass it in a module of this package and decorate with `register`.

    A method is generic in the spec of its configurations (``class AttentionKnockout(Method[KnockoutSpec])``):
    its ``check`` and ``readout`` receive ``RunConfig[KnockoutSpec]``, whose ``method`` is that spec
    (the registry hands a configuration only to the method of its kind)."""

    kind: ClassVar[str]
    sweep: ClassVar[type[Sweep] | None] = None  # its part under `sweeps:` (None: configurations written out)
    needs_depth: ClassVar[bool] = False  # expansion needs the model's number of layers
    #: The kind whose ``figure`` draws a panel mixing this kind with it (circuit_graft's weight
    #: view is drawn beside circuit_cmap's activation view); None: a mixed panel gets the default bars.
    draws_with: ClassVar[str | None] = None
    needs_heads: ClassVar[bool] = False  # expansion also needs its heads per layer (``n_heads``)

    def expand(self, sweep: Sweep, recipient: str, n_layers: int | None, n_heads: int | None = None) -> list[RunConfig]:
        """The configurations of one sweep. ``n_layers`` and ``n_heads`` (heads per layer) are the
        recipient's, or None before the models are loaded: a method that ``needs_depth`` (or
        ``needs_heads``) is then not asked."""
        raise NotImplementedError

    def check(self, config: RunConfig[SpecT], models: Mapping[str, LoadedModel]) -> list[str]:
        """Raise a `GraftlensError` if ``config`` does not fit the models; return the
        position selectors it uses, which are then resolved on every prompt."""
        raise NotImplementedError

    def readout(self, config: RunConfig[SpecT], execution: Execution) -> LastLogits:
        """``batch → logits[batch, vocab]`` at each prompt's last position."""
        raise NotImplementedError

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        """``(Figure, title)`` of one panel of this method's configurations, or None for none.

        The default: one bar per test template per configuration, the plain configurations as
        reference lines (`graftlens.methods.core.figures.bar_chart_of`)."""
        from graftlens.methods.core.figures import bar_chart_of

        return bar_chart_of(run, panel, configs)

    def figure_name(self, panel: str) -> str:
        """What the panel's figure file is named after (``figures/NN-{slug}.png``): the panel, by default."""
        return panel

    def tables(self, run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
        """Extra tables of one panel in the report (none by default)."""
        return []

    def files(self, run: RunData, panel: str, configs: list[StoredConfig]) -> dict[str, str]:
        """Text files the report writes next to itself for one panel (``{name: text}``; none by
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


def check_config(config: RunConfig, models: Mapping[str, LoadedModel], batches: Sequence[Prompts]) -> None:
    """``config`` fits its models and every prompt, or one `RecipeError` naming it."""
    try:
        if config.method is not None:
            check_fits(config.method, ModelShape.of(config.model, models[config.model]), "")
        for selector in method_for(config.kind).check(config, models):
            for batch in batches:
                resolve_positions(selector, batch.attention_mask, batch.spans)
    except GraftlensError as exc:
        raise RecipeError(f"configuration {config.name!r}: {exc}") from None
