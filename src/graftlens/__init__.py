"""graftlens: where does a finetuned model keep what it newly learned, and how does it retrieve it?

The public API, in tiers. This namespace holds what a researcher calls:

- loading: :func:`load_model`, :class:`LoadedModel`, :func:`run_logits`;
- weight grafting: :class:`Graft`, :func:`grafting`, :func:`grafted_forward`, :func:`graft_sweep`,
  :func:`grafted_generate`, and the position language (:func:`parse_positions`);
- hooks: :func:`capture`, :func:`edit`, :func:`run_with_cache`, :class:`Point`, :class:`Patch`,
  :func:`patched_logits`;
- one entry point per method: :func:`activation_patching`, :func:`attribution_patching`,
  :func:`cross_model_patched_logits` and :func:`cmap_sweep`, :func:`attention_knockout` and
  :func:`knockout_sweep`, :func:`project` and :func:`point_logits` (through the logit lens or
  a :func:`tuned_lens`), :func:`path_patching`, :func:`edge_attribution` (EAP)
  with :class:`EdgeCircuit` and :func:`edge_ablated_logits`, :class:`Circuit` with
  :func:`mean_ablated_logits` and :func:`faithfulness_curve`, :func:`learn_mask` (DCM),
  :func:`cancel_sublayers`, :func:`head_mapping_vectors`;
- experiments: :func:`load_recipe`, :func:`run_recipe`, :func:`open_run`;
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
