"""Activation-level methods: a hook layer, activation patching, CMAP, attention knockout, vocabulary projection,
path patching, edge attribution patching, edge circuits, mean-ablated circuits and their faithfulness curves,
and learned head masks (DCM)."""

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "graftlens.interventions.circuits": [
            "Circuit",
            "CircuitError",
            "head_means",
            "HeadGroup",
            "mean_ablated_logits",
            "random_circuit",
        ],
        "graftlens.interventions.edges": [
            "edge_attribution",
            "edge_patched_logits",
            "EdgeAttributionError",
            "EdgeScores",
            "ExactEdges",
            "rank_correlation",
        ],
        "graftlens.interventions.edge_circuits": ["edge_ablated_logits", "EdgeCircuit", "edges_for_heads"],
        "graftlens.interventions.faithfulness": ["faithfulness_curve", "FaithfulnessCurve", "random_heads", "top_circuit"],
        "graftlens.interventions.hooks": ["ActivationCache", "capture", "edit"],
        "graftlens.interventions.knockout": ["attention_knockout", "knockout_edges", "KnockoutError"],
        "graftlens.interventions.lens": ["point_logits", "project"],
        "graftlens.interventions.masks": ["DcmSettings", "desideratum_accuracy", "DesideratumBatch", "learn_mask", "LearnedMask"],
        "graftlens.interventions.metrics": ["logit_diff", "logprob", "Metric", "prob", "rank"],
        "graftlens.interventions.patches": ["Patch", "PatchError"],
        "graftlens.interventions.patching": [
            "activation_patching",
            "cross_model_patched_logits",
            "patched_logits",
            "PatchingSweep",
            "run_with_cache",
        ],
        "graftlens.interventions.paths": [
            "path_patched_logits",
            "path_patching",
            "PathInputs",
            "PathPatchingError",
            "Receiver",
            "top_heads",
        ],
        "graftlens.interventions.points": ["HEAD_POINTS", "hook_site", "parse_point", "Point", "POINT_NAMES", "PointError"],
    },
)
