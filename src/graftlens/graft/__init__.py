"""Dynamic weight grafting: the batched engine and its literal reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "DonorError": "graftlens.graft.donors",
        "DonorWeights": "graftlens.graft.donors",
        "Grafter": "graftlens.graft.engine",
        "grafted_forward": "graftlens.graft.engine",
        "grafted_generate": "graftlens.graft.engine",
        "grafting": "graftlens.graft.engine",
        "Graft": "graftlens.graft.rules",
        "GraftRuleError": "graftlens.graft.rules",
        "position_ids_for": "graftlens.models.run",
        "run_logits": "graftlens.models.run",
        "ALL": "graftlens.positions",
        "LT": "graftlens.positions",
        "NEW": "graftlens.positions",
        "PositionError": "graftlens.positions",
        "Selector": "graftlens.positions",
        "Span": "graftlens.positions",
        "parse_positions": "graftlens.positions",
        "resolve_positions": "graftlens.positions",
    },
)

if TYPE_CHECKING:
    from graftlens.graft.donors import DonorError, DonorWeights
    from graftlens.graft.engine import Grafter, grafted_forward, grafted_generate, grafting
    from graftlens.graft.rules import Graft, GraftRuleError
    from graftlens.models.run import position_ids_for, run_logits
    from graftlens.positions import ALL, LT, NEW, PositionError, Selector, Span, parse_positions, resolve_positions

__all__ = [
    "ALL",
    "DonorError",
    "DonorWeights",
    "Graft",
    "GraftRuleError",
    "Grafter",
    "LT",
    "NEW",
    "PositionError",
    "Selector",
    "Span",
    "grafted_forward",
    "grafted_generate",
    "grafting",
    "parse_positions",
    "position_ids_for",
    "resolve_positions",
    "run_logits",
]
