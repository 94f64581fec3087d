"""Activation-level methods: a hook layer, activation patching, CMAP, attention knockout, vocabulary projection, (type stub)."""

# Generated from the package's lazy_exports declaration by `make stubs`; do not edit.

from graftlens.interventions.circuits import (
    Circuit as Circuit,
    CircuitError as CircuitError,
    head_means as head_means,
    HeadGroup as HeadGroup,
    mean_ablated_logits as mean_ablated_logits,
    random_circuit as random_circuit,
)
from graftlens.interventions.edge_circuits import (
    edge_ablated_logits as edge_ablated_logits,
    EdgeCircuit as EdgeCircuit,
    edges_for_heads as edges_for_heads,
)
from graftlens.interventions.edges import (
    edge_attribution as edge_attribution,
    edge_patched_logits as edge_patched_logits,
    EdgeAttributionError as EdgeAttributionError,
    EdgeScores as EdgeScores,
    ExactEdges as ExactEdges,
    rank_correlation as rank_correlation,
)
from graftlens.interventions.faithfulness import (
    faithfulness_curve as faithfulness_curve,
    FaithfulnessCurve as FaithfulnessCurve,
    random_heads as random_heads,
    top_circuit as top_circuit,
)
from graftlens.interventions.hooks import (
    ActivationCache as ActivationCache,
    capture as capture,
    edit as edit,
)
from graftlens.interventions.knockout import (
    attention_knockout as attention_knockout,
    knockout_edges as knockout_edges,
    KnockoutError as KnockoutError,
)
from graftlens.interventions.lens import (
    point_logits as point_logits,
    project as project,
)
from graftlens.interventions.masks import (
    DcmSettings as DcmSettings,
    desideratum_accuracy as desideratum_accuracy,
    DesideratumBatch as DesideratumBatch,
    learn_mask as learn_mask,
    LearnedMask as LearnedMask,
)
from graftlens.interventions.metrics import (
    logit_diff as logit_diff,
    logprob as logprob,
    Metric as Metric,
    prob as prob,
    rank as rank,
)
from graftlens.interventions.patches import (
    Patch as Patch,
    PatchError as PatchError,
)
from graftlens.interventions.patching import (
    activation_patching as activation_patching,
    cross_model_patched_logits as cross_model_patched_logits,
    patched_logits as patched_logits,
    PatchingSweep as PatchingSweep,
    run_with_cache as run_with_cache,
)
from graftlens.interventions.paths import (
    path_patched_logits as path_patched_logits,
    path_patching as path_patching,
    PathInputs as PathInputs,
    PathPatchingError as PathPatchingError,
    Receiver as Receiver,
    top_heads as top_heads,
)
from graftlens.interventions.points import (
    HEAD_POINTS as HEAD_POINTS,
    hook_site as hook_site,
    parse_point as parse_point,
    Point as Point,
    POINT_NAMES as POINT_NAMES,
    PointError as PointError,
)

__all__ = [
    "activation_patching",
    "ActivationCache",
    "attention_knockout",
    "capture",
    "Circuit",
    "CircuitError",
    "cross_model_patched_logits",
    "DcmSettings",
    "desideratum_accuracy",
    "DesideratumBatch",
    "edge_ablated_logits",
    "edge_attribution",
    "edge_patched_logits",
    "EdgeAttributionError",
    "EdgeCircuit",
    "edges_for_heads",
    "EdgeScores",
    "edit",
    "ExactEdges",
    "faithfulness_curve",
    "FaithfulnessCurve",
    "head_means",
    "HEAD_POINTS",
    "HeadGroup",
    "hook_site",
    "knockout_edges",
    "KnockoutError",
    "learn_mask",
    "LearnedMask",
    "logit_diff",
    "logprob",
    "mean_ablated_logits",
    "Metric",
    "parse_point",
    "Patch",
    "patched_logits",
    "PatchError",
    "PatchingSweep",
    "path_patched_logits",
    "path_patching",
    "PathInputs",
    "PathPatchingError",
    "Point",
    "point_logits",
    "POINT_NAMES",
    "PointError",
    "prob",
    "project",
    "random_circuit",
    "random_heads",
    "rank",
    "rank_correlation",
    "Receiver",
    "run_with_cache",
    "top_circuit",
    "top_heads",
]
