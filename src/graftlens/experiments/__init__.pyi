"""Experiments: recipes (validated YAML) and the resumable sweep runner that writes a run's results store. (type stub)."""

# Generated from the package's lazy_exports declaration by `make stubs`; do not edit.

from graftlens.experiments.demo import (
    demo_models as demo_models,
)
from graftlens.experiments.recipe import (
    load_recipe as load_recipe,
    Recipe as Recipe,
    RecipeError as RecipeError,
    RunConfig as RunConfig,
    shipped_recipes as shipped_recipes,
)
from graftlens.experiments.runner import (
    run_recipe as run_recipe,
    RunSummary as RunSummary,
)
from graftlens.results.store import (
    ResultRow as ResultRow,
    ResultsStore as ResultsStore,
    StoreError as StoreError,
)

__all__ = [
    "demo_models",
    "load_recipe",
    "Recipe",
    "RecipeError",
    "ResultRow",
    "ResultsStore",
    "run_recipe",
    "RunConfig",
    "RunSummary",
    "shipped_recipes",
    "StoreError",
]
