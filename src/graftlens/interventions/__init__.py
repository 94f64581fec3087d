"""Activation-level methods: a hook layer, activation patching, CMAP, attention knockout, vocabulary projection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "ActivationCache": "graftlens.interventions.hooks",
        "capture": "graftlens.interventions.hooks",
        "edit": "graftlens.interventions.hooks",
        "KnockoutError": "graftlens.interventions.knockout",
        "attention_knockout": "graftlens.interventions.knockout",
        "knockout_edges": "graftlens.interventions.knockout",
        "point_logits": "graftlens.interventions.lens",
        "project": "graftlens.interventions.lens",
        "Patch": "graftlens.interventions.patching",
        "PatchError": "graftlens.interventions.patching",
        "PatchingSweep": "graftlens.interventions.patching",
        "activation_patching": "graftlens.interventions.patching",
        "cross_model_patched_logits": "graftlens.interventions.patching",
        "patched_logits": "graftlens.interventions.patching",
        "run_logits": "graftlens.interventions.patching",
        "run_with_cache": "graftlens.interventions.patching",
        "HEAD_POINTS": "graftlens.interventions.points",
        "POINT_NAMES": "graftlens.interventions.points",
        "Point": "graftlens.interventions.points",
        "PointError": "graftlens.interventions.points",
        "hook_site": "graftlens.interventions.points",
        "parse_point": "graftlens.interventions.points",
    },
)

if TYPE_CHECKING:
    from graftlens.interventions.hooks import ActivationCache, capture, edit
    from graftlens.interventions.knockout import KnockoutError, attention_knockout, knockout_edges
    from graftlens.interventions.lens import point_logits, project
    from graftlens.interventions.patching import (
        Patch,
        PatchError,
        PatchingSweep,
        activation_patching,
        cross_model_patched_logits,
        patched_logits,
        run_logits,
        run_with_cache,
    )
    from graftlens.interventions.points import HEAD_POINTS, POINT_NAMES, Point, PointError, hook_site, parse_point

__all__ = [
    "ActivationCache",
    "HEAD_POINTS",
    "KnockoutError",
    "POINT_NAMES",
    "Patch",
    "PatchError",
    "PatchingSweep",
    "Point",
    "PointError",
    "activation_patching",
    "attention_knockout",
    "capture",
    "cross_model_patched_logits",
    "edit",
    "hook_site",
    "knockout_edges",
    "parse_point",
    "patched_logits",
    "point_logits",
    "project",
    "run_logits",
    "run_with_cache",
]
