"""What a recipe needs before scoring: its dataset, its models (finetuned ones from the cache),
its test prompts, and a check of every configuration against the models."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graftlens.data.attributes import SUBJECT_TEXTS, load_subject_texts, subject_attribute_sets
from graftlens.data.dataset import FactDataset, load_dataset, tokenize_test
from graftlens.data.defaults import cached_dataset
from graftlens.data.entity_tracking import make_pairs, tokenize_entity_tracking
from graftlens.data.known_facts import KnownFact, load_known_facts, tokenize_known_facts
from graftlens.data.prompt_files import FilePrompt, load_prompt_file, prompt_file_hash, tokenize_prompt_file
from graftlens.data.prompts import TokenizedPrompt, check_tokenizer_fits, tokenizer_fingerprint
from graftlens.data.tasks import task_dataset
from graftlens.eval.batching import batches
from graftlens.eval.scoring import plain_last_logits, score_logits
from graftlens.experiments.recipe import EntityTrackingData, ModelSpec, Recipe
from graftlens.methods import RecipeError, RunConfig, check_config
from graftlens.models import LoadedModel, load_model
from graftlens.models.fingerprint import legacy_fingerprints, model_fingerprint
from graftlens.train import finetune

TASK_EXAMPLES = 2000  # training texts of a task finetune when the recipe does not say

FinetuneProgress = Callable[[str, int, int, float], None]  # (what trains: "finetuning sft", step, total steps, loss)


@dataclass
class RecipeData:
    """The prompts' source: a fact dataset (with its directory, for finetuning) or known facts."""

    content_hash: str
    manifest: dict  # what manifest.json records about the data
    dataset: FactDataset | None = None
    dataset_dir: Path | None = None
    known: list[KnownFact] | None = None
    own: list[FilePrompt] | None = None  # a prompt file's prompts
    entity_tracking: EntityTrackingData | None = None
    subject_texts: dict[str, str] | None = None  # for the attribute rate (known facts only)

    def attribute_sets(self, prompts: list[TokenizedPrompt], tokenizer) -> dict[str, frozenset[int]]:
        """``prompt id → attribute token ids of its subject`` (the attribute rate's candidate sets)."""
        if self.subject_texts is None:
            raise RecipeError("eval.metric attribute_rate needs known facts (data: {known_facts: ...}) with subject texts")
        source = str(self.manifest.get("subject_texts", SUBJECT_TEXTS))
        sets = subject_attribute_sets([str(p.meta["subject"]) for p in prompts], self.subject_texts, tokenizer, source)
        return {p.id: sets[str(p.meta["subject"])] for p in prompts}

    def prompts(self, recipe: Recipe, tokenizer) -> list[TokenizedPrompt]:
        if self.known is not None:
            return tokenize_known_facts(self.known, tokenizer)
        if self.own is not None:
            return tokenize_prompt_file(self.own, tokenizer)
        if self.entity_tracking is not None:
            return entity_tracking_prompts(self.entity_tracking, recipe, tokenizer)
        assert self.dataset is not None
        return recipe_prompts(recipe, self.dataset, tokenizer)


def recipe_data(recipe: Recipe, base_dir: Path | None = None) -> RecipeData:
    """The recipe's data, whichever kind it names."""
    spec = recipe.data
    if spec.known_facts is not None:
        path = None if spec.known_facts == "shipped" else _relative(Path(spec.known_facts), base_dir)
        known = load_known_facts(path)
        manifest: dict = {"known_facts": str(path or "shipped")}
        text = json.dumps([f.__dict__ for f in known], sort_keys=True)
        texts = None
        if recipe.eval.metric == "attribute_rate":  # the subject texts become part of the data
            texts = load_subject_texts(path)
            text += json.dumps(texts, sort_keys=True)
            manifest["subject_texts"] = str(path.parent / SUBJECT_TEXTS) if path else f"{SUBJECT_TEXTS} (shipped)"
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        manifest.update({"content_hash": digest, "n_facts": len(known)})
        return RecipeData(digest, manifest, known=known, subject_texts=texts)
    if spec.prompts is not None:
        path = _relative(Path(spec.prompts), base_dir)
        own = load_prompt_file(path)
        digest = prompt_file_hash(own)
        return RecipeData(digest, {"prompts": str(path), "content_hash": digest, "n_prompts": len(own)}, own=own)
    if spec.entity_tracking is not None:
        dumped = spec.entity_tracking.model_dump(mode="json")
        digest = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]
        return RecipeData(digest, {"entity_tracking": dumped, "content_hash": digest}, entity_tracking=spec.entity_tracking)
    dataset, directory = recipe_dataset(recipe, base_dir)
    manifest = {
        "dir": str(directory),
        "files": ["dataset.json", "facts.jsonl", "train.jsonl", "test.jsonl"],
        "content_hash": dataset.content_hash,
        "spec": spec.model_dump(mode="json"),
    }
    return RecipeData(dataset.content_hash, manifest, dataset, directory)


def _relative(path: Path, base_dir: Path | None) -> Path:
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def model_path(spec: str, base_dir: Path | None) -> str:
    """A recipe's model ``spec``: a relative path is taken from the recipe's folder when it exists
    there (as data paths are); a hub id, the embedded model's name or an absolute path as written."""
    relative = Path(spec).expanduser()
    if base_dir is not None and not relative.is_absolute() and (base_dir / relative).exists():
        return str(base_dir / relative)
    return spec


def recipe_dataset(recipe: Recipe, base_dir: Path | None = None) -> tuple[FactDataset, Path]:
    """The recipe's dataset: a directory (relative paths from the recipe file's folder) or generated facts."""
    spec = recipe.data
    if spec.dir is not None:
        directory = _relative(Path(spec.dir), base_dir)
        return load_dataset(directory), directory
    return cached_dataset(spec.kind, spec.facts, spec.seed)


def _placement(spec: ModelSpec, device: str | None) -> dict:
    """``load_model``'s arguments for a model's dtype and placement (a device map replaces ``--device``)."""
    if spec.device_map is None:
        return {"device": device, "dtype": spec.dtype}
    return {"dtype": spec.dtype, "device_map": spec.device_map, "offload_folder": spec.offload_folder}


def _placement_record(spec: ModelSpec) -> dict:
    """What the manifest records of a model's dtype and placement (nothing for the defaults)."""
    fields = {"dtype": spec.dtype, "device_map": spec.device_map}
    return {k: v for k, v in fields.items() if v is not None}


def prepare_models(
    recipe: Recipe,
    dataset_dir: Path | None,
    device: str | None = None,
    finetune_progress: FinetuneProgress | None = None,
    base_dir: Path | None = None,
) -> tuple[dict[str, LoadedModel], dict[str, dict]]:
    """Load (and where asked, finetune — cached by content hash) every model of the recipe. A
    relative model path is read from the recipe's folder ``base_dir`` when it is there."""
    models: dict[str, LoadedModel] = {}
    sources: dict[str, dict] = {}
    for name, spec in recipe.models.items():
        if spec.spec is not None:
            models[name] = load_model(model_path(spec.spec, base_dir), **_placement(spec, device))
            sources[name] = {"spec": spec.spec, **_placement_record(spec)}
            continue
        assert spec.finetune is not None
        task = spec.finetune.task
        if dataset_dir is None and task is None:
            raise RecipeError(f"model {name!r} finetunes on the recipe's data, which has no training documents")
        base_source = sources[spec.finetune.base]
        base_spec = base_source.get("checkpoint") or model_path(str(base_source.get("spec")), base_dir)

        def report(step: int, total: int, loss: float, _name: str = name) -> None:
            if finetune_progress is not None:
                finetune_progress(f"finetuning {_name}", step, total, loss)

        data: FactDataset | Path | None = dataset_dir
        if task is not None:
            n = spec.finetune.examples or TASK_EXAMPLES
            data = task_dataset(task, models[spec.finetune.base].tokenizer, n, seed=spec.finetune.settings.seed)
        assert data is not None
        result = finetune(base_spec, data, spec.finetune.settings, device=device, progress=report)
        models[name] = load_model(result.path, **_placement(spec, device))
        sources[name] = {
            **_placement_record(spec),
            "checkpoint": str(result.path),
            "finetuned_from": spec.finetune.base,
            "settings": spec.finetune.settings.model_dump(mode="json"),
            **({"task": task, "examples": spec.finetune.examples or TASK_EXAMPLES} if task else {}),
            "reused": result.reused,
        }
    _check_shared_tokenizer(models)
    return models, sources


def models_not_recorded(
    models: Mapping[str, LoadedModel], recorded: Mapping[str, str], sources: Mapping[str, Any] | None = None
) -> list[str]:
    """The names of ``models`` whose weights are not the ones a run recorded (``recorded``: name →
    fingerprint). A fingerprint an older graftlens gave the same weights counts as theirs: it
    named the path a model was read from, tried as the model's current one and as the spec or
    checkpoint path that ``sources`` (the run manifest's models) recorded."""
    wrong = []
    for name, model in models.items():
        stored = recorded.get(name)
        if stored == model_fingerprint(model.model):
            continue
        source = (sources or {}).get(name)
        paths = [str(source[k]) for k in ("checkpoint", "spec") if isinstance(source, dict) and source.get(k)]
        if stored is None or stored not in legacy_fingerprints(model.model, paths):
            wrong.append(name)
    return wrong


def _check_shared_tokenizer(models: dict[str, LoadedModel]) -> None:
    prints = {name: tokenizer_fingerprint(m.tokenizer) for name, m in models.items()}
    first = next(iter(prints))
    for name, fp in prints.items():
        if fp != prints[first]:
            raise RecipeError(f"models {first!r} and {name!r} have different tokenizers; grafting needs one vocabulary")
    for name, m in models.items():
        check_tokenizer_fits(m.model, m.tokenizer, f"model {name!r}")


def entity_tracking_prompts(spec: EntityTrackingData, recipe: Recipe, tokenizer) -> list[TokenizedPrompt]:
    """Every box count's pairs of every kind the recipe asks for (templates: ``"N boxes"`` for
    corrupted pairs, the desideratum's name otherwise)."""
    examples = [
        e for kind in spec.pairs for n in spec.boxes for e in make_pairs(tokenizer, kind, spec.examples, n, spec.seed, spec.half)
    ]
    prompts = tokenize_entity_tracking(examples, tokenizer)
    if recipe.eval.templates is not None:
        known = sorted({str(p.meta["template"]) for p in prompts})
        for t in recipe.eval.templates:
            if t not in known:
                raise RecipeError(
                    f"eval.templates names {t!r}, which the entity-tracking prompts have none of; they have: {', '.join(known)}"
                )
        prompts = [p for p in prompts if p.meta["template"] in recipe.eval.templates]
    return prompts


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
    """Every configuration fits its model and every prompt (each method says what to check).

    Run before scoring, so a bad recipe fails at once rather than after hours of sweeping. (The
    prompts' lengths are checked once, before any of them is scored: see ``check_prompt_lengths``.)"""
    all_batches = list(batches(prompts, 64, pad_id))
    for config in configs:
        check_config(config, models, all_batches)


def context_length(model: LoadedModel) -> int | None:
    """How many positions the model takes (None when its config does not say)."""
    config = model.model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompt_lengths(prompts: list[TokenizedPrompt], models: dict[str, LoadedModel], generate: int = 0) -> None:
    """Every prompt has its own id (a result row is keyed by it), and none is longer than a
    model's context (it would be scored on positions the model never saw)."""
    if not prompts:
        return
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise RecipeError(f"two prompts of the recipe's data have the id {p.id!r}: give each prompt its own id")
        seen.add(p.id)
    longest = max(prompts, key=lambda p: len(p.input_ids))
    for name, model in models.items():
        limit = context_length(model)
        if limit is not None and len(longest.input_ids) > limit:
            raise RecipeError(
                f"prompt {longest.id!r} has {len(longest.input_ids)} tokens, more than model {name!r} takes "
                f"({limit} positions): shorten it or leave it out of the data"
            )
        if limit is not None and len(longest.input_ids) + generate > limit:
            raise RecipeError(
                f"eval.generate: {generate} tokens after prompt {longest.id!r} ({len(longest.input_ids)} tokens) "
                f"go beyond the {limit} positions model {name!r} takes"
            )


def correct_only(model: LoadedModel, prompts: list[TokenizedPrompt], batch_size: int, pad_id: int) -> list[TokenizedPrompt]:
    """The prompts whose target is ``model``'s top-1 prediction (in their original order)."""
    run = plain_last_logits(model.model)
    right: set[str] = set()
    with torch.no_grad():
        for batch in batches(prompts, batch_size, pad_id):
            scores = score_logits(run(batch.to(model.device)), batch.prompts, keep_top=1)
            right.update(s.id for s in scores if s.target_rank == 1)
    kept = [p for p in prompts if p.id in right]
    if not kept:
        raise RecipeError(f"eval.only_correct: the recipient {model.spec!r} gets none of the {len(prompts)} prompts right")
    return kept


def prepare_lenses(configs, models: dict[str, LoadedModel], progress: FinetuneProgress | None = None) -> None:
    """Train (or find in the cache) the tuned lens of every model a configuration reads with
    ``lens: tuned``, before scoring: its readouts then load it from the cache."""
    from graftlens.train.tuned_lens import tuned_lens

    names = dict.fromkeys(c.model for c in configs if getattr(c.method, "lens", "logit") == "tuned")
    for name in names:

        def report(step: int, total: int, loss: float, _name: str = name) -> None:
            if progress is not None:
                progress(f"training the tuned lens of {_name}", step, total, loss)

        tuned_lens(models[name], progress=report)
