"""Experiments: recipes (validated YAML) and the resumable sweep runner that writes a run's results store.

Recipes load without torch (so a bad one is reported at once); the runner loads on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftlens.experiments.recipe import Recipe, RecipeError, RunConfig, load_recipe, shipped_recipes
from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "RunSummary": "graftlens.experiments.runner",
        "run_recipe": "graftlens.experiments.runner",
        "ResultRow": "graftlens.results.store",
        "ResultsStore": "graftlens.results.store",
        "StoreError": "graftlens.results.store",
    },
)

if TYPE_CHECKING:
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
