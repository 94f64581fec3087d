"""graftlens: where does a finetuned model keep what it newly learned, and how does it retrieve it? (type stub)."""

# Generated from the package's lazy_exports declaration by `make stubs`; do not edit.

__version__: str
from graftlens.errors import (
    DataError as DataError,
    GraftlensError as GraftlensError,
    InterventionError as InterventionError,
    ModelLoadError as ModelLoadError,
    RecipeError as RecipeError,
    StoreError as StoreError,
)
from graftlens.eval.batching import (
    Prompts as Prompts,
)
from graftlens.eval.text import (
    prompts as prompts,
)
from graftlens.experiments.demo import (
    demo_models as demo_models,
)
from graftlens.experiments.recipe import (
    load_recipe as load_recipe,
)
from graftlens.experiments.runner import (
    run_recipe as run_recipe,
)
from graftlens.graft.engine import (
    grafted_forward as grafted_forward,
    grafted_generate as grafted_generate,
    Grafter as Grafter,
    grafting as grafting,
)
from graftlens.graft.heads import (
    HeadGraft as HeadGraft,
)
from graftlens.graft.rules import (
    Graft as Graft,
)
from graftlens.graft.sweep import (
    graft_sweep as graft_sweep,
)
from graftlens.interventions.circuits import (
    Circuit as Circuit,
    head_means as head_means,
    HeadGroup as HeadGroup,
    mean_ablated_logits as mean_ablated_logits,
    random_circuit as random_circuit,
)
from graftlens.interventions.edge_circuits import (
    edge_ablated_logits as edge_ablated_logits,
    EdgeCircuit as EdgeCircuit,
)
from graftlens.interventions.edges import (
    edge_attribution as edge_attribution,
    edge_patched_logits as edge_patched_logits,
    EdgeScores as EdgeScores,
)
from graftlens.interventions.faithfulness import (
    faithfulness_curve as faithfulness_curve,
    FaithfulnessCurve as FaithfulnessCurve,
)
from graftlens.interventions.hooks import (
    ActivationCache as ActivationCache,
    capture as capture,
    edit as edit,
)
from graftlens.interventions.knockout import (
    attention_knockout as attention_knockout,
)
from graftlens.interventions.lens import (
    point_logits as point_logits,
    project as project,
)
from graftlens.interventions.mappings import (
    head_mapping_vectors as head_mapping_vectors,
)
from graftlens.interventions.masks import (
    DcmSettings as DcmSettings,
    DesideratumBatch as DesideratumBatch,
    learn_mask as learn_mask,
)
from graftlens.interventions.patches import (
    Patch as Patch,
)
from graftlens.interventions.patching import (
    activation_patching as activation_patching,
    attribution_patching as attribution_patching,
    cross_model_patched_logits as cross_model_patched_logits,
    patched_logits as patched_logits,
    run_with_cache as run_with_cache,
)
from graftlens.interventions.paths import (
    path_patched_logits as path_patched_logits,
    path_patching as path_patching,
    PathInputs as PathInputs,
    Receiver as Receiver,
)
from graftlens.interventions.points import (
    Point as Point,
)
from graftlens.interventions.sublayers import (
    cancel_sublayers as cancel_sublayers,
    sublayer_means as sublayer_means,
)
from graftlens.interventions.sweeps import (
    cmap_sweep as cmap_sweep,
    knockout_sweep as knockout_sweep,
)
from graftlens.interventions.tuned_lens import (
    TunedLens as TunedLens,
)
from graftlens.models.loading import (
    load_model as load_model,
    LoadedModel as LoadedModel,
)
from graftlens.models.run import (
    run_logits as run_logits,
)
from graftlens.positions import (
    parse_positions as parse_positions,
)
from graftlens.results.opened import (
    open_run as open_run,
)
from graftlens.train.tuned_lens import (
    tuned_lens as tuned_lens,
    TunedLensSettings as TunedLensSettings,
)

__all__ = [
    "__version__",
    "activation_patching",
    "ActivationCache",
    "attention_knockout",
    "attribution_patching",
    "cancel_sublayers",
    "capture",
    "Circuit",
    "cmap_sweep",
    "cross_model_patched_logits",
    "DataError",
    "DcmSettings",
    "demo_models",
    "DesideratumBatch",
    "edge_ablated_logits",
    "edge_attribution",
    "edge_patched_logits",
    "EdgeCircuit",
    "EdgeScores",
    "edit",
    "faithfulness_curve",
    "FaithfulnessCurve",
    "Graft",
    "graft_sweep",
    "grafted_forward",
    "grafted_generate",
    "Grafter",
    "grafting",
    "GraftlensError",
    "head_mapping_vectors",
    "head_means",
    "HeadGraft",
    "HeadGroup",
    "InterventionError",
    "knockout_sweep",
    "learn_mask",
    "load_model",
    "load_recipe",
    "LoadedModel",
    "mean_ablated_logits",
    "ModelLoadError",
    "open_run",
    "parse_positions",
    "Patch",
    "patched_logits",
    "path_patched_logits",
    "path_patching",
    "PathInputs",
    "Point",
    "point_logits",
    "project",
    "Prompts",
    "prompts",
    "random_circuit",
    "Receiver",
    "RecipeError",
    "run_logits",
    "run_recipe",
    "run_with_cache",
    "StoreError",
    "sublayer_means",
    "tuned_lens",
    "TunedLens",
    "TunedLensSettings",
]
