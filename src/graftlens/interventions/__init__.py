"""Activation-level methods: a hook layer, activation patching, CMAP, attention knockout, vocabulary projection,
path patching, mean-ablated circuits and learned head masks (DCM)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "Circuit": "graftlens.interventions.circuits",
        "CircuitError": "graftlens.interventions.circuits",
        "HeadGroup": "graftlens.interventions.circuits",
        "head_means": "graftlens.interventions.circuits",
        "mean_ablated_logits": "graftlens.interventions.circuits",
        "random_circuit": "graftlens.interventions.circuits",
        "DcmSettings": "graftlens.interventions.masks",
        "DesideratumBatch": "graftlens.interventions.masks",
        "LearnedMask": "graftlens.interventions.masks",
        "learn_mask": "graftlens.interventions.masks",
        "desideratum_accuracy": "graftlens.interventions.masks",
        "PathInputs": "graftlens.interventions.path_patching",
        "PathPatchingError": "graftlens.interventions.path_patching",
        "Receiver": "graftlens.interventions.path_patching",
        "path_patched_logits": "graftlens.interventions.path_patching",
        "path_patching": "graftlens.interventions.path_patching",
        "top_heads": "graftlens.interventions.path_patching",
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
    from graftlens.interventions.circuits import Circuit, CircuitError, HeadGroup, head_means, mean_ablated_logits, random_circuit
    from graftlens.interventions.hooks import ActivationCache, capture, edit
    from graftlens.interventions.knockout import KnockoutError, attention_knockout, knockout_edges
    from graftlens.interventions.lens import point_logits, project
    from graftlens.interventions.masks import DcmSettings, DesideratumBatch, LearnedMask, desideratum_accuracy, learn_mask
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
    from graftlens.interventions.path_patching import (
        PathInputs,
        PathPatchingError,
        Receiver,
        path_patched_logits,
        path_patching,
        top_heads,
    )
    from graftlens.interventions.points import HEAD_POINTS, POINT_NAMES, Point, PointError, hook_site, parse_point

__all__ = [
    "ActivationCache",
    "Circuit",
    "CircuitError",
    "DcmSettings",
    "DesideratumBatch",
    "HEAD_POINTS",
    "HeadGroup",
    "KnockoutError",
    "LearnedMask",
    "POINT_NAMES",
    "Patch",
    "PatchError",
    "PatchingSweep",
    "PathInputs",
    "PathPatchingError",
    "Point",
    "PointError",
    "Receiver",
    "activation_patching",
    "attention_knockout",
    "capture",
    "cross_model_patched_logits",
    "desideratum_accuracy",
    "edit",
    "head_means",
    "hook_site",
    "knockout_edges",
    "learn_mask",
    "mean_ablated_logits",
    "parse_point",
    "patched_logits",
    "path_patched_logits",
    "path_patching",
    "point_logits",
    "project",
    "random_circuit",
    "run_logits",
    "run_with_cache",
    "top_heads",
]
