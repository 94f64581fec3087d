"""What every method shares: strict frozen recipe parts, the checks of canonical names, graft
rules as recipes write them, and :class:`RunConfig`, the one unit the runner scores."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, field_validator

from graftlens.errors import GraftlensError, RecipeError
from graftlens.graft.rules import Graft
from graftlens.models.names import expand_components
from graftlens.positions import parse_positions

LayerSpec = int | str | list[int]


class Strict(BaseModel):
    """Unknown keys are errors; parsed recipes are immutable (and hashable into a run id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class GraftSpec(Strict):
    """One graft rule: ``donor`` computes ``components`` of ``layers`` at ``positions``."""

    donor: str
    components: str | list[str] = "all"
    layers: LayerSpec = "all"
    positions: str = "all"

    _components = field_validator("components")(check_components)
    _positions = field_validator("positions")(check_positions)

    def to_graft(self) -> Graft:
        return Graft(self.donor, self.components, self.layers, self.positions)


class Sweep(Strict):
    """Base of the recipe parts under ``sweeps:``; each method's sweep adds ``kind`` and its fields.

    It declares no field of its own, so a sweep's serialised form (and the run id hashed from
    it) is exactly its method's fields."""

    def model_references(self) -> list[str]:
        """Names of the recipe's models this sweep uses (checked against ``models:``)."""
        return [name for name in (getattr(self, "recipient", None), getattr(self, "donor", None)) if name is not None]

    def check_in_recipe(self, plain_configs: list[str]) -> None:
        """Raise ``ValueError`` if the sweep does not fit the rest of its recipe (``plain_configs``:
        the names of the written configurations without grafts)."""

    def check_data(self, data: dict) -> None:
        """Raise ``ValueError`` if the sweep cannot score the recipe's prompts (``data``: the
        recipe's ``data`` part, dumped)."""


@dataclass(frozen=True)
class RunConfig:
    """One configuration the runner scores: ``model`` runs the prompts with ``grafts`` applied,
    or with an activation-level ``method`` (knockout, lens, CMAP).

    ``kind`` names the method that made it (its readout and figure); ``coords`` place it in that
    figure (``{"component": "o+mlp", "layers": "quarter4"}``)."""

    name: str
    group: str
    model: str
    grafts: tuple[GraftSpec, ...] = ()
    coords: dict[str, str] = field(default_factory=dict, compare=False)
    method: Strict | None = None
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
            "group": self.group,
            "model": self.model,
            "kind": self.kind,
            "grafts": [g.model_dump(mode="json") for g in self.grafts],
            "coords": self.coords,
            "method": self.method.model_dump(mode="json") if self.method is not None else None,
            **({"phase": self.phase} if self.phase else {}),
        }
