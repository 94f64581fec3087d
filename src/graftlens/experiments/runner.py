"""The sweep runner: score every configuration of a recipe on its test prompts, resumably.

Work is cut into (configuration, batch) units in a fixed order; each unit's rows are written in
one transaction. A rerun skips the units already in the store and recomputes the same batches
as an uninterrupted run would, so the results are the same, row for row.
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from graftlens.eval.batching import batches
from graftlens.experiments.distributed import WorkerSetup, check_ray, score_on_ray
from graftlens.experiments.prepare import (
    FinetuneProgress,
    correct_only,
    models_not_recorded,
)
from graftlens.experiments.progress import Progress
from graftlens.experiments.recipe import EvalSpec, Recipe
from graftlens.experiments.setup import set_up_run
from graftlens.experiments.units import UnitWriter, plan_units, run_dir_keeper, run_scorer
from graftlens.experiments.verify import run_tolerance
from graftlens.fileio import write_json_atomic
from graftlens.methods import RunConfig
from graftlens.models import LoadedModel, check_device, model_fingerprint
from graftlens.provenance import run_versions
from graftlens.results.lock import run_lock
from graftlens.results.store import STORE_NAME, ResultsStore, StoreError

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    run_id: str
    n_configs: int
    n_prompts: int
    written: int  # rows this call added
    total: int  # rows in the store now
    seconds: float
    workers: int = 0  # Ray workers that scored (0: this process did)
    restarts: int = 0  # Ray workers lost and restarted, their units recomputed


def run_recipe(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    recipe_path: str | Path | None = None,
    device: str | None = None,
    resume: bool = True,
    command: str | None = None,
    progress: Progress | None = None,
    finetune_progress: FinetuneProgress | None = None,
    ray: str | None = None,
    workers: int | None = None,
) -> RunSummary:
    """Run ``recipe`` into ``run_dir`` (``results.sqlite`` + ``manifest.json``).

    Args:
        recipe: a validated recipe (`load_recipe`).
        run_dir: the run directory, made if missing.
        recipe_path: the recipe's file: relative data and model paths resolve from its folder,
            and the manifest records it.
        device: where the models run (``"cuda"``, ``"cpu"``; default: the CPU).
        resume: keep the results already in the store and compute only the missing ones (a
            store holding another recipe's results is an error); False empties it first.
        command: the command line, recorded in the manifest.
        progress: called as ``progress(done, total)`` in prompts scored.
        finetune_progress: called as ``progress(what, step, steps, loss)`` while a model trains.
        ray: a Ray cluster address, or ``"local"`` to start one here: Ray workers score the
            units and this process writes them, in the same order.
        workers: how many Ray workers (default: one per GPU of the cluster, else the cluster's
            CPUs divided by this process's threads, which each worker computes with).

    Returns:
        RunSummary: the run id, rows written by this call and in the store, and the time taken.

    Examples:
        The embedded model's top-1 on the shipped known facts; a few seconds:
        >>> import graftlens, pathlib, tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "plain.yaml").write_text(
        ...     "name: plain\\n"
        ...     "data: {known_facts: shipped}\\n"
        ...     "models: {pre: {spec: smollm2-135m}}\\n"
        ...     "recipient: pre\\n"
        ...     "eval: {metric: top1, bootstrap: 0}\\n"
        ...     "configs: [{name: PRE, model: pre}]\\n"
        ... )
        >>> recipe, path = graftlens.load_recipe(folder / "plain.yaml")
        >>> summary = graftlens.run_recipe(recipe, folder / "run", recipe_path=path)
        >>> results = graftlens.open_run(folder / "run").results
        >>> len(results), sorted(results["config"].unique())
        (161, ['PRE'])
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    check_device(device)
    on_ray = OnRay(ray, workers) if ray is not None else None
    if on_ray is not None:
        check_ray(on_ray.address)
    if run_dir.exists() and not run_dir.is_dir():
        raise StoreError(f"--out {run_dir} is a file: the run directory must be a folder (or not exist yet)")
    created = not run_dir.exists()
    try:
        with run_lock(run_dir):
            return _run_locked(recipe, run_dir, t0, recipe_path, device, resume, command, progress, finetune_progress, on_ray)
    except BaseException:
        if created:
            _discard_if_empty(run_dir)
        raise


def _discard_if_empty(run_dir: Path) -> None:
    """Remove a run directory this run created when it holds no result (a run that failed early)."""
    store_path = run_dir / STORE_NAME
    try:
        if store_path.exists():
            with ResultsStore(store_path) as store:
                if store.total() > 0:
                    return
    except StoreError:
        return
    shutil.rmtree(run_dir, ignore_errors=True)


@dataclass(frozen=True)
class OnRay:
    address: str  # ``local``: a Ray instance started here
    workers: int | None


def _same_inputs(stored: dict, inputs: dict, models: dict[str, LoadedModel], manifest: dict | None) -> bool:
    """The stored run was made from this data and these weights (fingerprints an older graftlens
    gave the same weights included)."""
    if not isinstance(stored, dict) or stored.get("dataset_hash") != inputs["dataset_hash"]:
        return False
    recorded = stored.get("models")
    if not isinstance(recorded, dict) or set(recorded) != set(inputs["models"]):
        return False
    sources = manifest.get("models") if isinstance(manifest, dict) else None
    return not models_not_recorded(models, recorded, sources if isinstance(sources, dict) else None)


def _run_locked(recipe, run_dir, t0, recipe_path, device, resume, command, progress, finetune_progress, on_ray: OnRay | None):
    run_id = recipe.content_hash()
    with ResultsStore.open_for_run(run_dir / STORE_NAME, restart=not resume) as store:
        _claim(store, run_dir, run_id, recipe, resume)
        recipe_path = Path(recipe_path) if recipe_path is not None else None
        # Every number against the models, before any forward pass of the prompts.
        setup = set_up_run(recipe, recipe_path.parent if recipe_path else None, device, finetune_progress)
        data, models, configs = setup.data, setup.models, setup.configs
        prompts = setup.prompts
        if recipe.eval.only_correct:
            prompts = correct_only(setup.recipient, prompts, recipe.eval.batch_size, setup.pad)
        attributes = setup.attributes(prompts)
        inputs = {
            "dataset_hash": data.content_hash,
            "models": {name: model_fingerprint(m.model) for name, m in models.items()},
        }
        _check_same_inputs(store, run_dir, inputs, models)
        manifest = _manifest(recipe, recipe_path, run_id, data, setup.sources, inputs, prompts, configs, command, models)
        _record(store, run_dir, run_id, recipe, inputs, manifest, configs)
        if on_ray is not None:
            base_dir = recipe_path.parent.resolve() if recipe_path else None
            worker_setup = WorkerSetup(
                recipe, base_dir, device, prompts, configs, attributes, inputs["models"], setup.pad, torch.get_num_threads()
            )
            del models, setup  # the workers load their own; this process only writes
            _free_memory()
            outcome = score_on_ray(
                store, run_id, worker_setup, address=on_ray.address, workers=on_ray.workers, progress=progress, run_dir=run_dir
            )
            seconds = time.perf_counter() - t0
            return RunSummary(
                run_dir,
                run_id,
                len(configs),
                len(prompts),
                outcome.written,
                store.count(run_id),
                seconds,
                outcome.workers,
                outcome.restarts,
            )
        written = _score_all(
            store,
            run_id,
            configs,
            models,
            prompts,
            setup.recipient,
            recipe.eval.batch_size,
            setup.pad,
            progress,
            attributes,
            run_dir,
            recipe.eval,
        )
        total = store.count(run_id)
    return RunSummary(run_dir, run_id, len(configs), len(prompts), written, total, time.perf_counter() - t0)


def _claim(store: ResultsStore, run_dir: Path, run_id: str, recipe: Recipe, resume: bool) -> None:
    """Claim the store for this run at once (its lock keeps other writers out until the run ends):
    emptied without ``resume``; another recipe's results are an error."""
    previous = store.get_meta("run")
    if not resume:
        store.clear()
    elif previous is not None and previous != run_id and store.total() > 0:
        raise StoreError(_another_recipe(run_dir, previous, store.get_meta("recipe") or {}, recipe))
    store.set_meta("run", run_id)
    store.set_meta("recipe", recipe.model_dump(mode="json"))


def _check_same_inputs(store: ResultsStore, run_dir: Path, inputs: dict, models: dict[str, LoadedModel]) -> None:
    """Stored results were made from this data and these weights, or there are none."""
    stored = store.get_meta("inputs")
    if stored is not None and not _same_inputs(stored, inputs, models, store.get_meta("manifest")) and store.total() > 0:
        raise StoreError(
            f"{run_dir} holds results made from other models or data than this recipe now gives "
            f"(stored {stored}, now {inputs}); pass --restart to discard them"
        )


def _record(store: ResultsStore, run_dir: Path, run_id: str, recipe: Recipe, inputs: dict, manifest: dict, configs) -> None:
    """What the run is, in the store and in ``manifest.json``, before anything is scored."""
    store.set_meta("run", run_id)
    store.set_meta("recipe", recipe.model_dump(mode="json"))
    store.set_meta("inputs", inputs)
    store.set_meta("manifest", manifest)
    store.set_configs(run_id, [c.to_json() for c in configs])
    write_json_atomic(run_dir / MANIFEST_NAME, manifest)


def _another_recipe(run_dir: Path, previous: str, stored: dict, recipe: Recipe) -> str:
    """Why a run directory's results cannot be resumed by ``recipe``: which settings differ."""
    changed = recipe_changes(stored, recipe.model_dump(mode="json"))
    shown = ", ".join(f"{path} ({old} → {new})" for path, old, new in changed[:4]) + (", …" if len(changed) > 4 else "")
    message = f"{run_dir} holds the results of another recipe ({stored.get('name', '?')!r}, id {previous})"
    if changed:
        message += f", which differs in {shown}"
    if [path for path, _, _ in changed] == ["eval.batch_size"]:
        old = changed[0][1]
        return (
            f"{message}. The batch size decides which prompts are padded and computed together, and that changes "
            f"stored values in their last digits, so a run keeps the batch size it began with: set eval.batch_size "
            f"back to {old} to resume, or pass --restart to discard the results, or choose another --out"
        )
    return f"{message}; pass --restart to discard them, or choose another --out"


def recipe_changes(old: object, new: object, path: str = "") -> list[tuple[str, object, object]]:
    """``(dotted path, old value, new value)`` of every setting that differs between two dumped recipes."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for key in dict.fromkeys([*old, *new])
            for change in recipe_changes(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [change for i, (a, b) in enumerate(zip(old, new, strict=True)) for change in recipe_changes(a, b, f"{path}[{i}]")]
    return [] if old == new else [(path, old, new)]


def _free_memory() -> None:
    """Give back the memory of models just dropped (on a GPU, to the workers that load them next)."""

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _score_all(
    store: ResultsStore,
    run_id: str,
    configs: list[RunConfig],
    models: dict[str, LoadedModel],
    prompts,
    recipient: LoadedModel,
    batch_size: int,
    pad: int,
    progress: Progress | None,
    attributes: dict[str, frozenset[int]] | None = None,
    run_dir: Path | None = None,
    asks: EvalSpec | None = None,
) -> int:
    """Score every (configuration, batch) not yet in the store. With ``attributes`` (prompt id →
    attribute token ids), each row also stores its attribute rate.

    Phase by phase (most recipes have one), then batch by batch, every configuration of a batch in
    turn: what configurations share for a batch (the recipient's prefix cache, a donor's
    activations) is made once and then dropped, so it never has to be kept for every batch at once."""
    work = list(batches(prompts, batch_size, pad))  # the same batches on every run
    scorer = run_scorer(
        models,
        recipient,
        configs,
        work,
        asks,
        attributes,
        lambda names: store.target_probs(run_id, names),
        run_dir_keeper(run_dir),
    )
    units, done = plan_units(configs, work, store, run_id)
    writer = UnitWriter(store, run_id, len(configs) * len(prompts), done, progress)
    for unit in units:
        for name in unit.configs:
            writer.add(unit, scorer.rows(name, work[unit.batch]))
    writer.report()
    return writer.written


def _manifest(recipe, recipe_path, run_id, data, sources, inputs, prompts, configs, command, models) -> dict:
    return {
        "run": run_id,
        "recipe": recipe.name,
        "recipe_file": str(recipe_path) if recipe_path else None,
        "command": command,
        "description": recipe.description,
        "seed": recipe.seed,
        "data": data.manifest,
        "prompts": [p.id for p in prompts],
        "models": {name: {**src, "fingerprint": inputs["models"][name]} for name, src in sources.items()},
        "recipient": recipe.recipient,
        "eval": recipe.eval.model_dump(mode="json"),
        "n_prompts": len(prompts),
        "n_configs": len(configs),
        # how far a re-scored value may stand from the stored one (graftlens verify)
        "tolerance": run_tolerance([str(m.dtype) for m in models.values()]),
        "versions": run_versions(),
    }
