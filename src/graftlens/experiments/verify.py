"""``graftlens verify``: re-score a seeded sample of a finished run's rows and compare.

A run directory records everything that made it: the recipe (in the store), the data's content
hash, each model's weight fingerprint, the prompts in scoring order and the batch size. Verifying
loads the same models (refusing others by fingerprint), rebuilds the same batches, scores the
sampled rows' (configuration, batch) units again, and compares each stored value with the new one
within the run's tolerance. It is how a reader checks that a result directory is what its recipe
produces, on this machine or another.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from graftlens.data.prompts import TokenizedPrompt
from graftlens.eval.batching import batches
from graftlens.experiments.prepare import models_not_recorded
from graftlens.experiments.progress import Progress
from graftlens.experiments.recipe import Recipe
from graftlens.experiments.setup import RunSetup, set_up_run
from graftlens.experiments.units import run_scorer
from graftlens.results.store import ResultRow, ResultsStore, StoreError

#: How far a re-scored probability may stand from the stored one, by the dtype the run computed
#: in: float32 differs across machines and thread counts in its last digits only.
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 5e-3}


def run_tolerance(dtypes: list[str]) -> float:
    """The tolerance a run of models in ``dtypes`` records in its manifest (the loosest of them)."""
    return max(TOLERANCE.get(d.removeprefix("torch."), TOLERANCE["bfloat16"]) for d in dtypes) if dtypes else TOLERANCE["float32"]


@dataclass(frozen=True)
class Mismatch:
    """One stored row whose value re-scored differently: ``field`` was ``stored``, is ``now``."""

    config: str
    example: str
    field: str
    stored: object
    now: object

    def __str__(self) -> str:
        return f"{self.config!r} / {self.example!r}: {self.field} stored {self.stored}, re-scored {self.now}"


@dataclass(frozen=True)
class Verification:
    run_dir: Path
    checked: int  # rows re-scored
    total: int  # rows in the store
    tolerance: float
    mismatches: list[Mismatch]
    expected: int = 0  # rows the run's configurations and prompts make
    missing: dict[str, int] = field(default_factory=dict)  # configuration → rows of it the store lacks
    unexpected: int = 0  # stored rows of no configuration or prompt of the run

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.missing and not self.unexpected

    @property
    def matched(self) -> int:
        return self.checked - len({(m.config, m.example) for m in self.mismatches})

    @property
    def sampled(self) -> bool:
        """Only some of the stored rows were re-scored (``--rows all`` re-scores every one)."""
        return self.checked < self.total


def verify_run(
    run_dir: str | Path, rows: int | None = 32, seed: int = 0, device: str | None = None, progress: Progress | None = None
) -> Verification:
    """Re-score ``rows`` rows of the run in ``run_dir`` drawn with ``seed`` (all of them when
    ``rows`` is None or at least the run's size) and compare every field with the stored one; and
    count the rows the store should hold but does not (a configuration never scored)."""
    if rows is not None and rows < 1:
        raise StoreError(f"--rows must be at least 1 or all (got {rows})")
    run_dir = Path(run_dir)
    with ResultsStore.open_existing(run_dir) as store:
        run_id, recipe, manifest, inputs = _recorded(store, run_dir)
        stored = store.rows(run_id)
        if not stored:
            raise StoreError(f"{run_dir} holds no results to verify")
        n = len(stored) if rows is None else min(rows, len(stored))
        picked = [stored[i] for i in sorted(random.Random(seed).sample(range(len(stored)), n))]

        base_dir = Path(manifest["recipe_file"]).parent if manifest.get("recipe_file") else None
        setup = set_up_run(recipe, base_dir, device)  # the runner's own setup and checks
        prompts = _same_inputs(setup, inputs, manifest)
        configs = setup.configs
        by_name = {c.name: c for c in configs}
        stored_configs = {c["name"]: c for c in store.configs(run_id)}
        for name, config in by_name.items():
            if name in stored_configs and stored_configs[name] != json.loads(json.dumps(config.to_json())):
                raise StoreError(f"configuration {name!r} expands differently than it was stored: verify needs the same code")
        expected, missing, unexpected = _coverage(stored, configs, manifest["prompts"])
        work = list(batches(prompts, recipe.eval.batch_size, setup.pad))
        batch_of = {p.id: i for i, b in enumerate(work) for p in b.prompts}
        scorer = run_scorer(
            setup.models,
            setup.recipient,
            configs,
            work,
            recipe.eval,
            setup.attributes(prompts),
            lambda names: store.target_probs(run_id, names),
            None,
        )
        units: dict[tuple[int, int, str], list[ResultRow]] = {}
        for row in picked:
            if row.config not in by_name or row.example not in batch_of:
                continue  # counted as unexpected above
            units.setdefault((by_name[row.config].phase, batch_of[row.example], row.config), []).append(row)
        tolerance = float(manifest.get("tolerance", run_tolerance([str(m.dtype) for m in setup.models.values()])))
        mismatches: list[Mismatch] = []
        for done, key in enumerate(sorted(units, key=lambda k: (k[0], k[1], configs.index(by_name[k[2]])))):
            _, batch, name = key
            now = {r.example: r for r in scorer.rows(name, work[batch])}
            for row in units[key]:
                mismatches += compare(row, now[row.example], tolerance)
            if progress is not None:
                progress(done + 1, len(units))
    return Verification(run_dir, len(picked), len(stored), tolerance, mismatches, expected, missing, unexpected)


def _same_inputs(setup: RunSetup, inputs: dict, manifest: dict) -> list[TokenizedPrompt]:
    """The run's prompts, in scoring order, once the data and the models are checked to be the
    ones the run was scored with."""
    if setup.data.content_hash != inputs["dataset_hash"]:
        raise StoreError(
            f"the recipe's data now hashes to {setup.data.content_hash}; the run was scored on {inputs['dataset_hash']}"
        )
    for name in models_not_recorded(setup.models, inputs["models"], manifest.get("models")):
        raise StoreError(
            f"model {name!r} loads other weights than the run was scored with (fingerprint "
            f"{inputs['models'].get(name)}): verify needs the same models"
        )
    by_id = {p.id: p for p in setup.prompts}
    missing = [i for i in manifest["prompts"] if i not in by_id]
    if missing:
        raise StoreError(f"prompt {missing[0]!r} of the run is not among the recipe's prompts any more")
    return [by_id[i] for i in manifest["prompts"]]


def _coverage(stored: list[ResultRow], configs: list, prompt_ids: list[str]) -> tuple[int, dict[str, int], int]:
    """Rows the run should hold (every configuration × every prompt), the rows each configuration
    lacks, and the stored rows of no configuration or prompt of the run."""
    have: dict[str, set[str]] = {}
    for row in stored:
        have.setdefault(row.config, set()).add(row.example)
    wanted = set(prompt_ids)
    missing = {c.name: len(wanted - have.get(c.name, set())) for c in configs}
    names = {c.name for c in configs}
    unexpected = sum(1 for row in stored if row.config not in names or row.example not in wanted)
    return len(configs) * len(wanted), {k: v for k, v in missing.items() if v}, unexpected


def _recorded(store: ResultsStore, run_dir: Path) -> tuple[str, Recipe, dict, dict]:
    run_id, dumped = store.get_meta("run"), store.get_meta("recipe")
    manifest, inputs = store.get_meta("manifest"), store.get_meta("inputs")
    if not (isinstance(run_id, str) and isinstance(dumped, dict) and isinstance(manifest, dict) and isinstance(inputs, dict)):
        raise StoreError(f"{run_dir} does not record the recipe, manifest and inputs of its run: it cannot be verified")
    try:
        recipe = Recipe.model_validate(dumped)
    except ValidationError as exc:
        raise StoreError(f"{run_dir} records a recipe this version cannot read ({exc.errors()[0]['msg']})") from None
    if recipe.content_hash() != run_id:
        raise StoreError(f"{run_dir}: the stored recipe hashes to {recipe.content_hash()}, not the run's id {run_id}")
    return run_id, recipe, manifest, inputs


def compare(stored: ResultRow, now: ResultRow, tolerance: float) -> list[Mismatch]:
    """The fields of a stored row that re-scoring did not reproduce (numbers within ``tolerance``)."""

    def close(a: float | None, b: float | None) -> bool:
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance) or (math.isnan(a) and math.isnan(b))

    out: list[Mismatch] = []

    def differs(field: str, a: object, b: object) -> None:
        out.append(Mismatch(stored.config, stored.example, field, a, b))

    for name in ("template", "direction", "prompt", "target", "top_tokens"):
        if getattr(stored, name) != getattr(now, name):
            differs(name, getattr(stored, name), getattr(now, name))
    if not close(stored.target_prob, now.target_prob):
        differs("target_prob", stored.target_prob, now.target_prob)
    if stored.target_rank != now.target_rank:
        differs("target_rank", stored.target_rank, now.target_rank)
    if not close(stored.target_logprob, now.target_logprob):
        differs("target_logprob", stored.target_logprob, now.target_logprob)
    if stored.continuation != now.continuation:
        differs("continuation", stored.continuation, now.continuation)
    for key in sorted(set(stored.extra) | set(now.extra)):
        if not close(stored.extra.get(key), now.extra.get(key)):
            differs(key, stored.extra.get(key), now.extra.get(key))
    return out
