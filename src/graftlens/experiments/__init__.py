"""Experiments: recipes (validated YAML) and the resumable sweep runner that writes a run's results store.

Recipes load without torch (so a bad one is reported at once); the runner loads on first use."""

from graftlens.lazy import lazy_exports

lazy_exports(
    globals(),
    {
        "graftlens.experiments.demo": ["demo_models"],
        "graftlens.experiments.recipe": ["load_recipe", "Recipe", "RecipeError", "RunConfig", "shipped_recipes"],
        "graftlens.experiments.runner": ["run_recipe", "RunSummary"],
        "graftlens.results.store": ["ResultRow", "ResultsStore", "StoreError"],
    },
)
