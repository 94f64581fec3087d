"""What a recipe needs before scoring: its dataset, its models (finetuned ones from the cache),
its test prompts, and a check of every configuration against the models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from graftlens.data.dataset import FactDataset, load_dataset, tokenize_test
from graftlens.data.defaults import cached_dataset
from graftlens.data.prompts import TokenizedPrompt, check_tokenizer_fits, tokenizer_fingerprint
from graftlens.errors import GraftlensError
from graftlens.eval.batching import batches
from graftlens.experiments.recipe import Recipe, RecipeError, RunConfig
from graftlens.graft.positions import resolve_positions
from graftlens.graft.rules import rule_sites
from graftlens.models import LoadedModel, load_model
from graftlens.train import finetune

FinetuneProgress = Callable[[str, int, int, float], None]  # (model name, step, total steps, loss)


@dataclass
class PreparedRun:
    dataset: FactDataset
    dataset_dir: Path
    models: dict[str, LoadedModel]
    sources: dict[str, dict]  # model name → {"spec": ...} or {"checkpoint": ..., "finetuned_from": ...}
    prompts: list[TokenizedPrompt]


def recipe_dataset(recipe: Recipe, base_dir: Path | None = None) -> tuple[FactDataset, Path]:
    """The recipe's dataset: a directory (relative paths from the recipe file's folder) or generated facts."""
    spec = recipe.data
    if spec.dir is not None:
        directory = Path(spec.dir)
        if not directory.is_absolute() and base_dir is not None:
            directory = base_dir / directory
        return load_dataset(directory), directory
    return cached_dataset(spec.kind, spec.facts, spec.seed)


def prepare_models(
    recipe: Recipe,
    dataset_dir: Path,
    device: str | None = None,
    finetune_progress: FinetuneProgress | None = None,
) -> tuple[dict[str, LoadedModel], dict[str, dict]]:
    """Load (and where asked, finetune — cached by content hash) every model of the recipe."""
    models: dict[str, LoadedModel] = {}
    sources: dict[str, dict] = {}
    for name, spec in recipe.models.items():
        if spec.spec is not None:
            models[name] = load_model(spec.spec, device=device)
            sources[name] = {"spec": spec.spec}
            continue
        assert spec.finetune is not None
        base_source = sources[spec.finetune.base]
        base_spec = base_source.get("checkpoint", base_source.get("spec"))

        def report(step: int, total: int, loss: float, _name: str = name) -> None:
            if finetune_progress is not None:
                finetune_progress(_name, step, total, loss)

        result = finetune(base_spec, dataset_dir, spec.finetune.settings, device=device, progress=report)
        models[name] = load_model(result.path, device=device)
        sources[name] = {
            "checkpoint": str(result.path),
            "finetuned_from": spec.finetune.base,
            "settings": spec.finetune.settings.model_dump(mode="json"),
            "reused": result.reused,
        }
    _check_shared_tokenizer(models)
    return models, sources


def _check_shared_tokenizer(models: dict[str, LoadedModel]) -> None:
    prints = {name: tokenizer_fingerprint(m.tokenizer) for name, m in models.items()}
    first = next(iter(prints))
    for name, fp in prints.items():
        if fp != prints[first]:
            raise RecipeError(f"models {first!r} and {name!r} have different tokenizers; grafting needs one vocabulary")
    for name, m in models.items():
        check_tokenizer_fits(m.model, m.tokenizer, f"model {name!r}")


def recipe_prompts(recipe: Recipe, dataset: FactDataset, tokenizer) -> list[TokenizedPrompt]:
    """The test prompts the recipe scores (its split, templates and directions), tokenized."""
    ev = recipe.eval
    known = sorted({e.template for e in dataset.test})
    for t in ev.templates or []:
        if t not in known:
            raise RecipeError(f"eval.templates names {t!r}, which the dataset has no test prompts of; it has: {', '.join(known)}")
    examples = [
        e
        for e in dataset.test_examples(split=ev.split)
        if (ev.templates is None or e.template in ev.templates) and e.direction in ev.directions
    ]
    if not examples:
        raise RecipeError("the recipe's eval settings select no test prompts of the dataset")
    return tokenize_test(examples, tokenizer)


def check_configs(configs: list[RunConfig], models: dict[str, LoadedModel], prompts: list[TokenizedPrompt], pad_id: int) -> None:
    """Every configuration's components, layers and position sets fit its model and every prompt.

    Run before scoring, so a bad recipe fails at once rather than after hours of sweeping."""
    all_batches = list(batches(prompts, 64, pad_id))
    for config in configs:
        adapter = models[config.model].adapter
        for rule in config.rules():
            try:
                rule_sites(adapter, rule)
                for batch in all_batches:
                    resolve_positions(rule.positions, batch.attention_mask, batch.spans)
            except GraftlensError as exc:
                raise RecipeError(f"configuration {config.name!r}: {exc}") from None
