"""The sweep runner: score every configuration of a recipe on its test prompts, resumably.

Work is cut into (configuration, batch) units in a fixed order; each unit's rows are written in
one transaction. A rerun skips the units already in the store and recomputes the same batches
as an uninterrupted run would, so the results are the same, row for row.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from graftlens.data.attributes import ATTRIBUTE_K
from graftlens.eval.batching import batches, pad_id_of
from graftlens.eval.scoring import LastLogits, Readout, attribute_rate, score_logits
from graftlens.experiments.recipe import EvalSpec, Recipe
from graftlens.experiments.setup import (
    FinetuneProgress,
    check_configs,
    check_prompt_lengths,
    correct_only,
    prepare_models,
    recipe_data,
)
from graftlens.fileio import write_json_atomic
from graftlens.methods import Context, RunConfig, method_for
from graftlens.models import LoadedModel, check_device, model_fingerprint
from graftlens.provenance import run_versions
from graftlens.results.lock import run_lock
from graftlens.results.store import STORE_NAME, ResultRow, ResultsStore, StoreError

MANIFEST_NAME = "manifest.json"
TOP_TOKENS_KEPT = 5

Progress = Callable[[int, int], None]  # (units done, units in all), in prompts scored


class Interrupted(RuntimeError):
    """Raised by ``stop_after_batches``: what a kill at that moment leaves behind (tests)."""


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    run_id: str
    n_configs: int
    n_prompts: int
    written: int  # rows this call added
    total: int  # rows in the store now
    seconds: float


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
    stop_after_batches: int | None = None,
) -> RunSummary:
    """Run ``recipe`` into ``run_dir`` (``results.sqlite`` + ``manifest.json``).

    With ``resume`` (the default), results already in the store are kept and only the missing
    ones are computed; a store holding another recipe's results is an error. Without it, the
    store is emptied first."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    check_device(device)
    if run_dir.exists() and not run_dir.is_dir():
        raise StoreError(f"--out {run_dir} is a file: the run directory must be a folder (or not exist yet)")
    created = not run_dir.exists()
    try:
        with run_lock(run_dir):
            return _run_locked(recipe, run_dir, t0, recipe_path, device, resume, command, progress, finetune_progress,
                               stop_after_batches)  # fmt: skip
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


def _run_locked(recipe, run_dir, t0, recipe_path, device, resume, command, progress, finetune_progress, stop_after_batches):
    run_id = recipe.content_hash()
    with ResultsStore.open_for_run(run_dir / STORE_NAME, restart=not resume) as store:
        previous = store.get_meta("run")
        if not resume:
            store.clear()
        elif previous is not None and previous != run_id and store.total() > 0:
            old = (store.get_meta("recipe") or {}).get("name", "?")
            raise StoreError(
                f"{run_dir} holds the results of another recipe ({old!r}, id {previous}); "
                "pass --restart to discard them, or choose another --out"
            )
        # Claimed at once (the lock keeps other writers out until this run ends).
        store.set_meta("run", run_id)
        store.set_meta("recipe", recipe.model_dump(mode="json"))

        recipe_path = Path(recipe_path) if recipe_path is not None else None
        data = recipe_data(recipe, recipe_path.parent if recipe_path else None)
        models, sources = prepare_models(recipe, data.dataset_dir, device, finetune_progress)
        recipient = models[recipe.recipient]
        pad = pad_id_of(recipient.tokenizer)
        prompts = data.prompts(recipe, recipient.tokenizer)
        check_prompt_lengths(prompts, models)
        if recipe.eval.only_correct:
            prompts = correct_only(recipient, prompts, recipe.eval.batch_size, pad)
        configs = recipe.expanded(n_layers=recipient.adapter.n_layers, n_heads=recipient.adapter.n_heads)
        check_configs(configs, models, prompts, pad)
        attributes = data.attribute_sets(prompts, recipient.tokenizer) if recipe.eval.metric == "attribute_rate" else None

        inputs = {
            "dataset_hash": data.content_hash,
            "models": {name: model_fingerprint(m.model) for name, m in models.items()},
        }
        stored_inputs = store.get_meta("inputs")
        if stored_inputs is not None and stored_inputs != inputs and store.total() > 0:
            raise StoreError(
                f"{run_dir} holds results made from other models or data than this recipe now gives "
                f"(stored {stored_inputs}, now {inputs}); pass --restart to discard them"
            )
        manifest = _manifest(recipe, recipe_path, run_id, data, sources, inputs, prompts, configs, command)
        store.set_meta("run", run_id)
        store.set_meta("recipe", recipe.model_dump(mode="json"))
        store.set_meta("inputs", inputs)
        store.set_meta("manifest", manifest)
        store.set_configs(run_id, [c.to_json() for c in configs])
        write_json_atomic(run_dir / MANIFEST_NAME, manifest)

        written = _score_all(store, run_id, configs, models, prompts, recipient, recipe.eval.batch_size, pad,
                             progress, stop_after_batches, attributes, run_dir, recipe.eval)  # fmt: skip
        total = store.count(run_id)
    return RunSummary(run_dir, run_id, len(configs), len(prompts), written, total, time.perf_counter() - t0)


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
    stop_after_batches: int | None,
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
    context = Context(models, results=lambda names: store.target_probs(run_id, names), batches=work, directory=run_dir,
                      configs=configs, target_logprob=bool(asks and asks.target_logprob),
                      generate=asks.generate if asks else 0)  # fmt: skip
    total = len(configs) * len(prompts)
    done_units = written = batches_run = 0
    done = {config.name: store.done(run_id, config.name) for config in configs}
    readouts: dict[str, LastLogits] = {}
    phases = sorted({c.phase for c in configs})
    for batch, phase_configs in ((b, [c for c in configs if c.phase == ph]) for ph in phases for b in work):
        ids = {p.id for p in batch.prompts}
        for config in phase_configs:
            if ids <= done[config.name]:
                done_units += len(ids)
                continue
            if ids & done[config.name]:
                raise StoreError(f"the store holds part of a batch of {config.name!r}: it was written by other code")
            if stop_after_batches is not None and batches_run >= stop_after_batches:
                raise Interrupted(f"stopped after {batches_run} batches")
            if config.name not in readouts:
                readouts[config.name] = method_for(config.kind).readout(config, context)
            model = models[config.model]
            with torch.no_grad():
                readout = Readout.of(readouts[config.name](batch.to(model.device)))
            logits = readout.logits  # [batch, vocab]
            scores = score_logits(logits, batch.prompts, keep_top=TOP_TOKENS_KEPT)
            extras: list[dict[str, float]] = [context.extras(config.name) for _ in batch.prompts]
            if attributes is not None:
                rates = attribute_rate(logits, [attributes[p.id] for p in batch.prompts], ATTRIBUTE_K)
                extras = [{**e, "attribute_rate": rate} for e, rate in zip(extras, rates)]
            measured = _measured(readout, recipient.tokenizer, len(ids))
            store.add(run_id, [_row(config.name, p, s, recipient.tokenizer, e, *m)
                               for p, s, e, m in zip(batch.prompts, scores, extras, measured)])  # fmt: skip
            batches_run += 1
            written += len(ids)
            done_units += len(ids)
            if progress is not None:
                progress(done_units, total)
    if progress is not None:
        progress(done_units, total)
    return written


def _measured(readout: Readout, tokenizer, n: int) -> list[tuple[float | None, str | None]]:
    """Each row's (target log-probability, decoded continuation), None where not measured."""
    logprobs = readout.target_logprob.tolist() if readout.target_logprob is not None else [None] * n
    texts: list[str | None] = [None] * n
    if readout.continuation is not None:
        eos = getattr(tokenizer, "eos_token_id", None)
        # A continuation ends at the model's end-of-text token (kept, so that the stop shows).
        rows = [row[: row.index(eos) + 1] if eos in row else row for row in readout.continuation.tolist()]
        texts = list(tokenizer.batch_decode(rows))
    return list(zip(logprobs, texts))


def _row(config: str, prompt, score, tokenizer, extra: dict[str, float], target_logprob: float | None = None,
         continuation: str | None = None) -> ResultRow:  # fmt: skip
    return ResultRow(
        config=config,
        example=prompt.id,
        template=str(prompt.meta.get("template", prompt.meta.get("relation", ""))),
        direction=str(prompt.meta.get("direction", "")),
        prompt=prompt.prompt,
        target=prompt.target,
        target_prob=score.target_prob,
        target_rank=score.target_rank,
        top_tokens=tuple(tokenizer.decode([t]) for t in score.top_token_ids),
        extra=extra,
        target_logprob=target_logprob,
        continuation=continuation,
    )


def _manifest(recipe, recipe_path, run_id, data, sources, inputs, prompts, configs, command) -> dict:
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
        "versions": run_versions(),
    }
