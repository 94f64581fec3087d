"""Dynamic weight grafting: the batched engine and its literal reference."""

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "graftlens.graft.donors": ["DonorError", "DonorWeights"],
        "graftlens.graft.engine": ["grafted_forward", "grafted_generate", "Grafter", "grafting"],
        "graftlens.graft.heads": ["HeadGraft", "HeadGraftError"],
        "graftlens.graft.rules": ["Graft", "GraftRuleError"],
        "graftlens.positions": ["ALL", "LT", "NEW", "parse_positions", "PositionError", "resolve_positions", "Selector", "Span"],
    },
)
