"""Sweeps on a Ray cluster: workers score units, the driver alone writes the run.

Each worker is a Ray actor that loads the recipe's models once (one per GPU where the cluster
has GPUs, else one per CPU) and scores the units it is sent: one batch of one phase, with every
configuration of that phase the store still lacks, so that what configurations share for a batch
(the recipient's prefix cache, a donor's activations) is still made once. The driver keeps the
store's lock, writes each unit's rows in the order a single process would (units that finish
early wait for the ones before them), and merges the tensors methods keep into the run
directory. Resume, kills and the "another recipe" guard are therefore the runner's own.

A worker that dies (killed, out of memory, its node lost) is replaced by a new one, which loads
the models, and the unit it held is sent again; nothing it computed had been written. Phases are
barriers: a later phase starts once every unit of the earlier ones is written, and its workers
read those results from a snapshot the driver sends.

Ray is an optional dependency (``pip install 'graftlens[ray]'``), imported only here and only
when a run asks for it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftlens.data.prompts import TokenizedPrompt
from graftlens.errors import RecipeError
from graftlens.experiments.progress import Progress
from graftlens.experiments.recipe import Recipe
from graftlens.experiments.units import Keep, Unit, UnitWriter, plan_units, run_dir_keeper, run_scorer
from graftlens.methods import RunConfig
from graftlens.provenance import run_versions
from graftlens.results.store import ResultRow, ResultsStore

LOCAL = "local"  # ``--ray`` without an address: start a Ray instance on this machine
WORKER_RESTARTS = 3  # how often a worker lost is replaced in its place before the run goes on without it
UNIT_FAILURES = 3  # how often one unit may take its worker down before the run stops
CONNECT_TIMEOUT_S = 5.0  # how long to wait for a cluster's address to answer
# Environment the workers need to find what the driver found (the finetune cache, the HF cache).
FORWARDED_ENV = ("GRAFTLENS_CACHE", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

Kept = tuple[str, Mapping[str, Any], Mapping[str, str]]  # (file name, tensors, metadata): Keep's arguments


class DistributedError(RecipeError):
    """A distributed run cannot start or cannot go on (Ray missing, unreachable, its workers lost)."""


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to score any unit of the run exactly as the driver would."""

    recipe: Recipe
    base_dir: Path | None  # the recipe file's folder (relative data paths)
    device: str | None
    prompts: Sequence[TokenizedPrompt]  # the run's prompts, as the driver chose them (only_correct applied)
    configs: Sequence[RunConfig]
    attributes: Mapping[str, frozenset[int]] | None
    fingerprints: Mapping[str, str]  # model name → the fingerprint the driver loaded
    pad_id: int  # the recipient tokenizer's padding id (batches are made the same everywhere)
    # The driver's intra-op threads: a CPU reduction split over another number of threads may
    # round differently, so workers compute with this many to store the very same rows (set
    # OMP_NUM_THREADS, or torch.set_num_threads, in the driver to choose it).
    threads: int
    # The driver's working directory: relative paths in the recipe (model directories) mean the
    # same on a worker that sees it (a shared filesystem), as they do to a single process.
    cwd: str = field(default_factory=os.getcwd)
    # Python's and the packages' versions that decide the numbers (a worker must have the same).
    versions: Mapping[str, str] = field(default_factory=run_versions)


@dataclass(frozen=True)
class DistributedOutcome:
    written: int  # rows added by this run
    workers: int
    restarts: int  # workers lost and restarted during the run (their units recomputed)


class ScoringWorker:
    """A Ray actor's body: the recipe's models, loaded once, and the scorer of units.

    Setting up may fail (a recipe whose finetune is not in this node's cache gives other
    weights, say); the failure is kept and raised by `ready`, so that the driver reports
    it as the error it is, not as a dead actor."""

    def __init__(self, setup: WorkerSetup) -> None:
        self._failure: BaseException | None = None
        self._earlier: Mapping[str, dict[str, float]] = {}
        self._kept: list[Kept] = []
        try:
            self._load(setup)
        except Exception as exc:  # noqa: BLE001 - raised again by ready()
            self._failure = exc

    def _load(self, setup: WorkerSetup) -> None:
        import torch

        from graftlens.eval.batching import batches
        from graftlens.experiments.prepare import prepare_models, recipe_data
        from graftlens.models import model_fingerprint

        node = os.uname().nodename
        for package, version in run_versions().items():
            if version != setup.versions.get(package):
                raise DistributedError(
                    f"a Ray worker on {node} has {package} {version}, the driver {setup.versions.get(package)}: "
                    "install the same versions on every node"
                )
        torch.set_num_threads(setup.threads)
        if os.path.isdir(setup.cwd):
            os.chdir(setup.cwd)
        recipe = setup.recipe
        data = recipe_data(recipe, setup.base_dir)
        models, _ = prepare_models(recipe, data.dataset_dir, setup.device, base_dir=setup.base_dir)
        for name, model in models.items():
            if model_fingerprint(model.model) != setup.fingerprints[name]:
                raise DistributedError(
                    f"a Ray worker on {node} loaded other weights for model {name!r} than the driver: "
                    "give every node the same models (a shared GRAFTLENS_CACHE for finetuned ones)"
                )
        recipient = models[recipe.recipient]
        self._work = list(batches(setup.prompts, recipe.eval.batch_size, setup.pad_id))
        self._scorer = run_scorer(
            models,
            recipient,
            setup.configs,
            self._work,
            recipe.eval,
            setup.attributes,
            self._results,
            lambda *kept: self._kept.append(kept),
        )

    def ready(self) -> int:
        """The worker's process id, once its models are loaded (or the error that stopped it)."""
        if self._failure is not None:
            raise self._failure
        return os.getpid()

    def score(self, unit: Unit, earlier: Mapping[str, dict[str, float]] | None) -> tuple[list[list[ResultRow]], list[Kept]]:
        """Each of the unit's configurations' rows, in its order, and the tensors kept meanwhile.

        ``earlier``: the stored target probabilities of the earlier phases' configurations."""
        self._earlier = earlier or {}
        batch = self._work[unit.batch]
        rows = [self._scorer.rows(name, batch) for name in unit.configs]
        kept, self._kept = self._kept, []
        return rows, kept

    def _results(self, names: Sequence[str]) -> dict[str, dict[str, float]]:
        return {name: dict(self._earlier.get(name, {})) for name in names}


def score_on_ray(
    store: ResultsStore,
    run_id: str,
    setup: WorkerSetup,
    *,
    address: str = LOCAL,
    workers: int | None = None,
    progress: Progress | None = None,
    run_dir: Path | None = None,
) -> DistributedOutcome:
    """Score every unit the store lacks on Ray workers; write the rows here, in the runner's order."""
    from graftlens.eval.batching import batches

    work = list(batches(setup.prompts, setup.recipe.eval.batch_size, setup.pad_id))
    units, done = plan_units(setup.configs, work, store, run_id)
    writer = UnitWriter(store, run_id, len(setup.configs) * len(setup.prompts), done, progress)
    writer.report()  # the bar shows while the workers load their models
    if not units:  # a finished run: nothing to start Ray for
        return DistributedOutcome(0, 0, 0)
    ray = _import_ray()
    started = _connect(ray, address)
    actors: list = []
    try:
        shared = ray.put(setup)  # referenced while the run lasts: a worker started in place of a lost one reads it
        actors, make = _start_workers(ray, shared, setup, workers)
        count = len(actors)
        pool = _Pool(ray, actors, make, run_dir_keeper(run_dir))
        for phase in sorted({u.phase for u in units}):
            earlier = [c.name for c in setup.configs if c.phase < phase]
            snapshot = ray.put(store.target_probs(run_id, earlier)) if earlier else None
            pool.run([u for u in units if u.phase == phase], snapshot, writer)
        writer.report()
        return DistributedOutcome(writer.written, count, pool.restarts)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


def check_ray(address: str) -> None:
    """Fail at once, before models load or finetune, when Ray is missing or ``address`` does not answer."""
    _import_ray()
    _check_reachable(address)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise DistributedError("--ray needs Ray, an optional extra: pip install 'graftlens[ray]'") from None
    return ray


def _connect(ray, address: str) -> bool:
    """Join the cluster at ``address`` (``local``: start one here); True when this call started Ray."""
    if ray.is_initialized():  # a caller (a notebook, the tests) already joined a cluster
        return False
    _check_reachable(address)
    env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False}
    try:
        if address == LOCAL:  # a private instance: its start-up notes are not the user's concern
            ray.init(include_dashboard=False, logging_level=logging.ERROR, **options)
        else:
            ray.init(address=address, logging_level=logging.WARNING, **options)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError ...
        where = "a local Ray instance" if address == LOCAL else f"the Ray cluster at {address!r}"
        raise DistributedError(f"cannot start or join {where}: {exc}") from None
    return True


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) that nothing answers on is one error at once (Ray
    itself would keep retrying for minutes)."""

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address in (LOCAL, "auto") or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise DistributedError(f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}") from None


def _start_workers(ray, shared, setup: WorkerSetup, workers: int | None) -> tuple[list, Callable[[], Any]]:
    """``workers`` actors, by default one per GPU of the cluster, or where it has none, one per
    ``setup.threads`` CPUs (a CPU worker computes with that many threads and reserves as many);
    and how to start another one (in place of one lost)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    on_gpus = gpus > 0 and (setup.device is None or setup.device.startswith("cuda"))
    cpus = int(resources.get("CPU", 0))
    slots = gpus if on_gpus else cpus // setup.threads
    count = workers if workers is not None else max(slots, 1)
    if count < 1:
        raise DistributedError(f"--workers {count}: a run needs at least one worker")
    if count > slots:
        has = f"{gpus} GPUs, one per worker" if on_gpus else f"{cpus} CPUs, {setup.threads} per worker"
        threads = "" if on_gpus else " (the threads this process computes with)"
        raise DistributedError(f"--workers {count}: the Ray cluster has {has}{threads}")
    actor_class = ray.remote(ScoringWorker).options(num_gpus=1 if on_gpus else 0, num_cpus=0 if on_gpus else setup.threads)

    def make():
        return actor_class.remote(shared)

    actors = [make() for _ in range(count)]
    for actor in actors:
        _get(ray, actor.ready.remote())
    return actors, make


def _get(ray, ref):
    """``ray.get``, raising a worker's own error (a recipe error, say) rather than Ray's wrapper of it."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


class _Pool:
    """The workers: each holds at most one unit. A unit whose worker died goes back to the
    queue, and a new worker takes the dead one's place once it has loaded its models (at most
    ``WORKER_RESTARTS`` times for one place)."""

    def __init__(self, ray, actors: list, make: Callable[[], Any], keep: Keep | None) -> None:
        self.ray, self.make, self.keep = ray, make, keep  # keep: merges tensors the workers kept into the run directory
        self.idle = deque(actors)
        self.actors = actors  # every live worker (the caller stops them at the end)
        self.deaths = {id(a): 0 for a in actors}  # per place: how many workers died in it
        self.restarts = 0
        self.lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError)
        # object ref → (unit index, or None for a new worker's ``ready`` call; the actor)
        self.in_flight: dict[Any, tuple[int | None, Any]] = {}

    def run(self, units: list[Unit], snapshot, writer: UnitWriter) -> None:
        """Score ``units`` (one phase) and write them in their order, holding those that come early."""
        queue = deque(range(len(units)))
        failures = [0] * len(units)
        finished: dict[int, tuple[list[list[ResultRow]], list[Kept]]] = {}
        next_write = 0
        while next_write < len(units):
            while queue and self.idle:
                index, actor = queue.popleft(), self.idle.popleft()
                self.in_flight[actor.score.remote(units[index], snapshot)] = (index, actor)
            if not self.in_flight:
                raise DistributedError("every Ray worker was lost; the rows written so far are kept (run again to go on)")
            (ref,), _ = self.ray.wait(list(self.in_flight), num_returns=1)
            index, actor = self.in_flight.pop(ref)
            if index is None:
                self._started(ref, actor)
                continue
            try:
                finished[index] = _get(self.ray, ref)
            except self.lost as exc:
                failures[index] += 1
                if failures[index] >= UNIT_FAILURES:
                    unit, first_line = units[index], (str(exc).splitlines() or [""])[0]
                    raise DistributedError(
                        f"batch {unit.batch} (phase {unit.phase}) took its Ray worker down {failures[index]} times; "
                        f"last: {type(exc).__name__}: {first_line}"
                    ) from None
                queue.appendleft(index)  # sent again, to the new worker or another
                self._replace(actor)
                continue
            self.idle.append(actor)
            while next_write in finished:
                rows, kept = finished.pop(next_write)
                for config_rows in rows:
                    writer.add(units[next_write], config_rows)
                for item in kept if self.keep is not None else ():
                    self.keep(*item)
                next_write += 1

    def _replace(self, dead) -> None:
        """Start a worker in place of ``dead``; it takes units once its models are loaded."""
        deaths = self.deaths.pop(id(dead)) + 1
        self.actors.remove(dead)
        self.ray.kill(dead, no_restart=True)  # whatever is left of it
        self.restarts += 1
        if deaths > WORKER_RESTARTS:
            return  # this place has lost too many; the others go on
        actor = self.make()
        self.actors.append(actor)
        self.deaths[id(actor)] = deaths
        self.in_flight[actor.ready.remote()] = (None, actor)

    def _started(self, ref, actor) -> None:
        """A new worker answered ``ready``: it takes units (or died loading, and is replaced)."""
        try:
            _get(self.ray, ref)  # its own error (a recipe error, say) is raised as itself
        except self.lost:
            self._replace(actor)
        else:
            self.idle.append(actor)
