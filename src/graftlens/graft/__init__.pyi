"""Dynamic weight grafting: the batched engine and its literal reference. (type stub)."""

# Generated from the package's lazy_exports declaration by `make stubs`; do not edit.

from graftlens.graft.donors import (
    DonorError as DonorError,
    DonorWeights as DonorWeights,
)
from graftlens.graft.engine import (
    grafted_forward as grafted_forward,
    grafted_generate as grafted_generate,
    Grafter as Grafter,
    grafting as grafting,
)
from graftlens.graft.heads import (
    HeadGraft as HeadGraft,
    HeadGraftError as HeadGraftError,
)
from graftlens.graft.rules import (
    Graft as Graft,
    GraftRuleError as GraftRuleError,
)
from graftlens.positions import (
    ALL as ALL,
    LT as LT,
    NEW as NEW,
    parse_positions as parse_positions,
    PositionError as PositionError,
    resolve_positions as resolve_positions,
    Selector as Selector,
    Span as Span,
)

__all__ = [
    "ALL",
    "DonorError",
    "DonorWeights",
    "Graft",
    "grafted_forward",
    "grafted_generate",
    "Grafter",
    "grafting",
    "GraftRuleError",
    "HeadGraft",
    "HeadGraftError",
    "LT",
    "NEW",
    "parse_positions",
    "PositionError",
    "resolve_positions",
    "Selector",
    "Span",
]
