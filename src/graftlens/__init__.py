"""graftlens: where does a finetuned model keep what it newly learned, and how does it retrieve it?

The public API, in tiers. This namespace holds what a researcher calls:

- loading: `load_model`, `LoadedModel`, `run_logits`;
- weight grafting: `Graft`, `grafting`, `grafted_forward`, `graft_sweep`,
  `grafted_generate`, and the position language (`parse_positions`);
- hooks: `capture`, `edit`, `run_with_cache`, `Point`, `Patch`,
  `patched_logits`;
- one entry point per method: `activation_patching`, `attribution_patching`,
  `cross_model_patched_logits` and `cmap_sweep`, `attention_knockout` and
  `knockout_sweep`, `project` and `point_logits` (through the logit lens or
  a `tuned_lens`), `path_patching`, `edge_attribution` (EAP)
  with `EdgeCircuit` and `edge_ablated_logits`, `Circuit` with
  `mean_ablated_logits` and `faithfulness_curve`, `learn_mask` (DCM),
  `cancel_sublayers`, `head_mapping_vectors`;
- experiments: `load_recipe`, `run_recipe`, `open_run`;
- the five errors a user catches.

Subpackages (``graftlens.models``, ``graftlens.graft``, ``graftlens.interventions``,
``graftlens.data``, ``graftlens.experiments``, ...) hold everything else. Names load on first use
(PEP 562), so ``import graftlens`` and the commands that run no model import no torch.
"""

from graftlens.lazy import lazy_exports

__version__ = "0.1.0"

lazy_exports(
    globals(),
    {
        "graftlens.errors": ["DataError", "GraftlensError", "InterventionError", "ModelLoadError", "RecipeError", "StoreError"],
        "graftlens.experiments.recipe": ["load_recipe"],
        "graftlens.experiments.runner": ["run_recipe"],
        "graftlens.graft.engine": ["grafted_forward", "grafted_generate", "Grafter", "grafting"],
        "graftlens.graft.heads": ["HeadGraft"],
        "graftlens.graft.rules": ["Graft"],
        "graftlens.graft.sweep": ["graft_sweep"],
        "graftlens.interventions.circuits": ["Circuit", "head_means", "HeadGroup", "mean_ablated_logits", "random_circuit"],
        "graftlens.interventions.edges": ["edge_attribution", "edge_patched_logits", "EdgeScores"],
        "graftlens.interventions.edge_circuits": ["edge_ablated_logits", "EdgeCircuit"],
        "graftlens.interventions.faithfulness": ["faithfulness_curve", "FaithfulnessCurve"],
        "graftlens.interventions.hooks": ["ActivationCache", "capture", "edit"],
        "graftlens.interventions.knockout": ["attention_knockout"],
        "graftlens.interventions.lens": ["point_logits", "project"],
        "graftlens.interventions.tuned_lens": ["TunedLens"],
        "graftlens.interventions.mappings": ["head_mapping_vectors"],
        "graftlens.interventions.masks": ["DcmSettings", "DesideratumBatch", "learn_mask"],
        "graftlens.eval.batching": ["Prompts"],
        "graftlens.experiments.demo": ["demo_models"],
        "graftlens.eval.text": ["prompts"],
        "graftlens.interventions.patches": ["Patch"],
        "graftlens.interventions.patching": [
            "activation_patching",
            "attribution_patching",
            "cross_model_patched_logits",
            "patched_logits",
            "run_with_cache",
        ],
        "graftlens.interventions.paths": ["path_patched_logits", "path_patching", "PathInputs", "Receiver"],
        "graftlens.interventions.points": ["Point"],
        "graftlens.interventions.sublayers": ["cancel_sublayers", "sublayer_means"],
        "graftlens.interventions.sweeps": ["cmap_sweep", "knockout_sweep"],
        "graftlens.models.loading": ["load_model", "LoadedModel"],
        "graftlens.models.run": ["run_logits"],
        "graftlens.positions": ["parse_positions"],
        "graftlens.results.opened": ["open_run"],
        "graftlens.train.tuned_lens": ["tuned_lens", "TunedLensSettings"],
    },
    eager=["__version__"],
)
