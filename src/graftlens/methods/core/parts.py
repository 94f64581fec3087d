"""What every method shares: strict frozen recipe parts, the checks of canonical names, graft
rules as recipes write them, and `RunConfig`, the one unit the runner scores."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from graftlens.errors import GraftlensError, RecipeError, RenamedRecipeKey
from graftlens.graft.rules import Graft
from graftlens.models.names import expand_components
from graftlens.positions import parse_positions

if TYPE_CHECKING:
    from graftlens.models import LoadedModel

LayerSpec = int | str | list[int]


class Strict(BaseModel):
    """Unknown keys are errors; parsed recipes are immutable (and hashable into a run id); every
    number is finite (``inf`` and ``nan`` are refused, whatever the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)

    #: Keys an earlier recipe format used, ``{old: new}``: read with the meaning they had, each
    #: with one `RenamedRecipeKey` warning naming the key to write. A subclass adds to its
    #: bases' renames (`all_renamed`), as with `added`.
    renamed: ClassVar[dict[str, str]] = {}

    #: Keys added after the recipe part was first written, ``{key: default}``: at their default
    #: they are left out of what is hashed into a run id and stored per configuration
    #: (`stable_dump`), so adding an option changes no run and no store.
    added: ClassVar[dict[str, Any]] = {}

    def stable_dump(self) -> dict:
        """The JSON dump without added keys at their defaults."""
        added = {k: v for cls in reversed(type(self).__mro__) for k, v in vars(cls).get("added", {}).items()}
        return {k: v for k, v in self.model_dump(mode="json").items() if not (k in added and v == added[k])}

    @classmethod
    def all_renamed(cls) -> dict[str, str]:
        """``{old: new}`` of this class and every base (a subclass's own win)."""
        return {k: v for base in reversed(cls.__mro__) for k, v in vars(base).get("renamed", {}).items()}

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        renamed = cls.all_renamed()
        if not renamed or not isinstance(data, dict) or not set(renamed) & set(data):
            return data
        data = dict(data)
        for old, new in renamed.items():
            if old in data:
                if new in data:
                    raise ValueError(f"'{old}' is the deprecated name of '{new}': write only '{new}'")
                data[new] = data.pop(old)
                warnings.warn(RenamedRecipeKey(f"recipe key '{old}' is now '{new}' (same meaning)"), stacklevel=2)
        return data


@dataclass(frozen=True)
class ModelShape:
    """The sizes a recipe's numbers are checked against: those of the model a sweep runs on."""

    name: str  # the recipe's name for the model
    n_layers: int
    n_heads: int  # query heads per layer
    vocab: int  # logits per position

    @classmethod
    def of(cls, name: str, loaded: LoadedModel) -> ModelShape:
        out = loaded.model.get_output_embeddings()
        vocab = out.weight.shape[0] if out is not None else loaded.model.config.vocab_size
        return cls(name, loaded.adapter.n_layers, loaded.adapter.n_heads, int(vocab))


@dataclass(frozen=True)
class Fits:
    """Field metadata (``Annotated[int, Fits("vocab")]``): the field's number(s) must fit the
    model the sweep runs on. Checked for every sweep, and every configuration it expands into,
    once the models are loaded and before anything is scored (`check_fits`).

    - ``vocab``: a count of tokens (top-k), at most the vocabulary;
    - ``window``: a count of layers, at most the model's depth;
    - ``layer``: a layer index, ``0..n-1`` or ``-n..-1`` counted from the last;
    - ``head``: a head index of every layer, ``0..heads-1`` (each item of a list);
    - ``heads``: a count of heads, at most the model's heads in all;
    - ``selection`` / ``selections``: one / a list of layer selections (``all``, ``half2``, ``[3, 4]``)."""

    what: Literal["vocab", "window", "layer", "head", "heads", "selection", "selections"]

    def problem(self, value: object, shape: ModelShape) -> str | None:
        """Why ``value`` does not fit ``shape`` (None: it fits)."""
        from graftlens.models.names import select_layers

        n = shape.n_layers
        model = f"model {shape.name!r}"
        if self.what in ("selection", "selections"):
            for item in value if self.what == "selections" else [value]:  # type: ignore[union-attr]
                try:
                    if not select_layers(item, n):
                        return f"{item!r} selects no layer"
                except GraftlensError as exc:
                    return f"{exc} ({model})"
            return None
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, int):
                continue
            if self.what == "vocab" and v > shape.vocab:
                return f"{v} is more than the vocabulary of {model} ({shape.vocab} tokens)"
            if self.what == "window" and v > n:
                return f"a window of {v} layers is wider than {model} ({n} layers)"
            if self.what == "layer" and not -n <= v < n:
                return f"{v} is not a layer of {model} (0..{n - 1}, or -{n}..-1 from the last)"
            if self.what == "head" and not 0 <= v < shape.n_heads:
                return f"{v} is not a head of {model} (0..{shape.n_heads - 1})"
            if self.what == "heads" and v > n * shape.n_heads:
                return f"{v} heads are more than {model} has ({n} layers × {shape.n_heads} = {n * shape.n_heads})"
        return None


def check_fits(part: BaseModel, shape: ModelShape, where: str, prefix: str = "") -> None:
    """Every `Fits` field of ``part`` (and of the recipe parts inside it) fits ``shape``, or
    one `RecipeError`: ``"{where} {field}: {why}"`` (``sizes.value_fetchers`` inside a part)."""
    for name, info in type(part).model_fields.items():
        value = getattr(part, name)
        for bound in info.metadata:
            if isinstance(bound, Fits) and value is not None:
                problem = bound.problem(value, shape)
                if problem is not None:
                    raise RecipeError(f"{where} {prefix}{name}: {problem}".lstrip())
        if isinstance(value, BaseModel):
            check_fits(value, shape, where, f"{prefix}{name}.")


def check_sweeps_fit(sweeps: list[Sweep], recipient: str, models: Mapping[str, LoadedModel]) -> None:
    """Every sweep's numbers fit the model it runs on (see `Fits`), or one error naming
    the sweep (its place under ``sweeps:`` and its kind), the field, the value and the bound."""
    for i, sweep in enumerate(sweeps, 1):
        name = getattr(sweep, "recipient", None) or recipient
        check_fits(sweep, ModelShape.of(name, models[name]), f"sweeps[{i}] ({getattr(sweep, 'kind', '?')})")


def check_components(value: str | list[str]) -> str | list[str]:
    try:
        expand_components(value)
    except GraftlensError as exc:  # pydantic reports ValueErrors with the key they belong to
        raise ValueError(str(exc)) from None
    return value


def check_positions(value: str) -> str:
    try:
        parse_positions(value)
    except GraftlensError as exc:
        raise ValueError(str(exc)) from None
    return value


def check_position_list(values: list[str]) -> list[str]:
    for v in values:
        check_positions(v)
    return values


def sweep_layers(sweep: Sweep, field: str, n_layers: int) -> list[int]:
    """The layers a sweep's ``field`` selects on a model of ``n_layers``, or one error naming the field."""
    from graftlens.models.names import select_layers

    try:
        return list(select_layers(getattr(sweep, field), n_layers))
    except GraftlensError as exc:
        raise RecipeError(f"{getattr(sweep, 'kind', 'a')} sweep, {field}: {exc}") from None


def layers_label(layers: LayerSpec) -> str:
    return ",".join(map(str, layers)) if isinstance(layers, list) else str(layers)


def shared_fields(part: BaseModel, fields_of: type[BaseModel]) -> dict:
    """``part``'s values of the fields ``fields_of`` declares: what a sweep and each configuration it
    expands into share, declared once in a base class of both (``kind`` excepted)."""
    return {name: getattr(part, name) for name in fields_of.model_fields if name != "kind"}


class GraftSpec(Strict):
    """One graft rule: ``donor`` computes ``components`` of ``layers`` at ``positions``."""

    donor: str
    """the model whose weights are grafted (a name in `models`)"""
    components: str | list[str] = "all"
    """canonical components or groups (`q`, `attn`, `o+mlp`, `all`)"""
    layers: LayerSpec = "all"
    """layers: an index, a list, or a named group (`all`, `half2`, `quarter4`)"""
    positions: str = "all"
    """where the donor computes: a position selector (`FE`, `LT`, `subject`, `(FE+LT)^C`, ...)"""

    _components = field_validator("components")(check_components)
    _positions = field_validator("positions")(check_positions)

    def to_graft(self) -> Graft:
        return Graft(self.donor, self.components, self.layers, self.positions)


class Sweep(Strict):
    """Base of the recipe parts under ``sweeps:``; each method's sweep adds ``kind`` and its fields.

    What every sweep has: ``recipient``, the model it intervenes on (None: the recipe's), and
    ``panel``, the report panel its configurations are drawn in (each method's sweep sets its
    default name)."""

    renamed: ClassVar[dict[str, str]] = {"group": "panel"}

    recipient: str | None = None
    """the model intervened on (default: the recipe's `recipient`)"""
    panel: str
    """the report's figure its configurations are drawn in"""

    def model_references(self) -> list[str]:
        """Names of the recipe's models this sweep uses (checked against ``models:``)."""
        return [name for name in (getattr(self, "recipient", None), getattr(self, "donor", None)) if name is not None]

    def check_in_recipe(self, plain_configs: list[str]) -> None:
        """Raise ``ValueError`` if the sweep does not fit the rest of its recipe (``plain_configs``:
        the names of the written configurations without grafts)."""

    def check_with_sweeps(self, sweeps: list[Sweep]) -> None:
        """Raise ``ValueError`` if the sweep needs another sweep the recipe lacks (``sweeps``: all of them)."""

    def check_data(self, data: dict) -> None:
        """Raise ``ValueError`` if the sweep cannot score the recipe's prompts (``data``: the
        recipe's ``data`` part, dumped)."""

    def check_batches(self, data: dict, batch_size: int) -> None:
        """Raise ``ValueError`` if the sweep cannot score the recipe's prompts in batches of
        ``batch_size`` (the recipe's ``eval.batch_size``)."""


SpecT = TypeVar("SpecT")


@dataclass(frozen=True, kw_only=True)
class RunConfig(Generic[SpecT]):
    """One configuration the runner scores: ``model`` runs the prompts with ``grafts`` applied,
    or with an activation-level ``method`` (knockout, lens, CMAP).

    ``kind`` names the method that made it (its readout and figure); ``coords`` place it in that
    figure (``{"component": "o+mlp", "layers": "quarter4"}``)."""

    name: str
    panel: str  # the report's panel: the configurations drawn in one figure
    model: str
    grafts: tuple[GraftSpec, ...] = ()
    coords: dict[str, str] = field(default_factory=dict, compare=False)
    # The spec of an activation-level method (its kind's ``Method[SpecT]``); None for weight grafting
    # and the plain model.
    method: SpecT = None  # type: ignore[assignment]
    kind: str = "configs"
    # Configurations are scored phase by phase: a readout may read the stored results of earlier
    # phases (path patching picks a stage's receivers from the stage before it).
    phase: int = field(default=0, compare=False)

    @property
    def plain(self) -> bool:
        """No grafts and no method: the model as it is."""
        return not self.grafts and self.method is None

    def rules(self) -> list[Graft]:
        return [g.to_graft() for g in self.grafts]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "group": self.panel,  # the stored and exported key of the panel
            "model": self.model,
            "kind": self.kind,
            "grafts": [g.model_dump(mode="json") for g in self.grafts],
            "coords": self.coords,
            "method": self.method.stable_dump() if self.method is not None else None,
            **({"phase": self.phase} if self.phase else {}),
        }
