"""Experiments: recipes (validated YAML) and the resumable sweep runner that writes a run's results store."""

from graftlens.experiments.recipe import Recipe, RecipeError, RunConfig, load_recipe, shipped_recipes
from graftlens.experiments.runner import RunSummary, run_recipe
from graftlens.results.store import ResultRow, ResultsStore, StoreError

__all__ = [
    "Recipe",
    "RecipeError",
    "ResultRow",
    "ResultsStore",
    "RunConfig",
    "RunSummary",
    "StoreError",
    "load_recipe",
    "run_recipe",
    "shipped_recipes",
]
