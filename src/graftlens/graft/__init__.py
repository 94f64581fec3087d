"""Dynamic weight grafting: the batched engine and its literal reference."""

from graftlens.graft.donors import DonorError, DonorWeights
from graftlens.graft.engine import Grafter, grafted_forward, grafting
from graftlens.graft.rules import Graft, GraftRuleError
from graftlens.models.run import position_ids_for, run_logits
from graftlens.positions import ALL, LT, PositionError, Selector, Span, parse_positions, resolve_positions

__all__ = [
    "ALL",
    "LT",
    "DonorError",
    "DonorWeights",
    "Graft",
    "GraftRuleError",
    "Grafter",
    "PositionError",
    "Selector",
    "Span",
    "grafted_forward",
    "grafting",
    "parse_positions",
    "position_ids_for",
    "resolve_positions",
    "run_logits",
]
