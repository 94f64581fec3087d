"""Activation-level methods: a hook layer, activation patching, CMAP, attention knockout, vocabulary projection."""

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
    "HEAD_POINTS",
    "POINT_NAMES",
    "ActivationCache",
    "KnockoutError",
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
