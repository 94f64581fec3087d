"""What a run is made of, set up and checked once: its data, its models, its prompts and its
configurations. The runner scores from it and ``graftlens verify`` re-scores from it, so the two
can never check different things."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graftlens.data.prompts import TokenizedPrompt
from graftlens.eval.batching import pad_id_of
from graftlens.experiments.prepare import (
    FinetuneProgress,
    RecipeData,
    check_configs,
    check_prompt_lengths,
    prepare_lenses,
    prepare_models,
    recipe_data,
)
from graftlens.experiments.recipe import Recipe
from graftlens.methods import RunConfig
from graftlens.methods.core.parts import check_sweeps_fit
from graftlens.models import LoadedModel


@dataclass
class RunSetup:
    """A recipe made ready to score: every check that needs the models has passed."""

    recipe: Recipe
    data: RecipeData
    models: dict[str, LoadedModel]
    sources: dict[str, dict]  # model name → how it was made (spec, checkpoint, finetuning settings)
    prompts: list[TokenizedPrompt]  # the recipe's prompts, in order (before ``eval.only_correct``)
    configs: list[RunConfig]  # the recipe's configurations, expanded for the recipient

    @property
    def recipient(self) -> LoadedModel:
        return self.models[self.recipe.recipient]

    @property
    def pad(self) -> int:
        return pad_id_of(self.recipient.tokenizer)

    def attributes(self, prompts: list[TokenizedPrompt]) -> dict[str, frozenset[int]] | None:
        """Prompt id → its attribute token ids, when the recipe's metric is the attribute rate."""
        if self.recipe.eval.metric != "attribute_rate":
            return None
        return self.data.attribute_sets(prompts, self.recipient.tokenizer)


def set_up_run(
    recipe: Recipe, base_dir: Path | None, device: str | None = None, progress: FinetuneProgress | None = None
) -> RunSetup:
    """Load (and where asked, finetune) the models, make the prompts and configurations, and check
    every number against the models (prompt lengths, sweeps, configurations), before any forward
    pass of the prompts; tuned lenses the configurations read are trained (cached) here too."""
    data = recipe_data(recipe, base_dir)
    models, sources = prepare_models(recipe, data.dataset_dir, device, progress, base_dir)
    recipient = models[recipe.recipient]
    prompts = data.prompts(recipe, recipient.tokenizer)
    check_prompt_lengths(prompts, models, recipe.eval.generate)
    check_sweeps_fit(recipe.sweeps, recipe.recipient, models)
    configs = recipe.expanded(n_layers=recipient.adapter.n_layers, n_heads=recipient.adapter.n_heads)
    check_configs(configs, models, prompts, pad_id_of(recipient.tokenizer))
    prepare_lenses(configs, models, progress)
    return RunSetup(recipe, data, models, sources, prompts, configs)
