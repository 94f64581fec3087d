"""A sweep's work in units, and how one unit becomes result rows.

A unit is one batch of one phase with the configurations of that phase the store still lacks for
it, in the recipe's order. Units come in one fixed order (phase, then batch); a run writes each
unit's rows configuration by configuration in that order, whether it computes them itself or
receives them from distributed workers, so every way of running gives the same store."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from graftlens.data.attributes import ATTRIBUTE_K
from graftlens.eval.batching import Prompts
from graftlens.eval.scoring import LastLogits, Readout, attribute_rate, score_logits
from graftlens.experiments.recipe import EvalSpec
from graftlens.fileio import merge_tensors_atomic
from graftlens.methods import Execution, RunConfig, method_for
from graftlens.methods.core.execution import Keep, Measures
from graftlens.models import LoadedModel
from graftlens.results.store import ResultRow, ResultsStore, StoreError

TOP_TOKENS_KEPT = 5


@dataclass(frozen=True)
class Unit:
    """Batch ``batch`` (an index into the run's batches) of ``phase``, for ``configs`` (names)."""

    phase: int
    batch: int
    configs: tuple[str, ...]
    n_prompts: int  # prompts in the batch: each configuration adds this many rows


def plan_units(configs: Sequence[RunConfig], work: Sequence[Prompts], store: ResultsStore, run: str) -> tuple[list[Unit], int]:
    """The units of run ``run`` still to score, in scoring order, and how many results the store
    already holds.

    A batch stored in part for a configuration cannot have come from a run of this code (a
    unit's rows land in one transaction per configuration), so it is an error."""
    done = {c.name: store.done(run, c.name) for c in configs}  # configuration → examples stored
    units: list[Unit] = []
    already = 0
    for phase in sorted({c.phase for c in configs}):
        for index, batch in enumerate(work):
            ids = {p.id for p in batch.prompts}
            missing = []
            for config in (c for c in configs if c.phase == phase):
                if ids <= done[config.name]:
                    already += len(ids)
                elif ids & done[config.name]:
                    raise StoreError(f"the store holds part of a batch of {config.name!r}: it was written by other code")
                else:
                    missing.append(config.name)
            if missing:
                units.append(Unit(phase, index, tuple(missing), len(ids)))
    return units, already


def run_dir_keeper(run_dir: Path | None) -> Keep | None:
    """``Execution.keep`` for a run directory: tensors a method keeps are merged into its files."""
    if run_dir is None:
        return None
    return lambda name, tensors, metadata: merge_tensors_atomic(run_dir / name, tensors, metadata)


class UnitWriter:
    """Writes a run's rows into its store, one configuration of a unit per transaction, counting
    them and reporting progress (``progress(results done, results in all)``)."""

    def __init__(self, store: ResultsStore, run: str, total: int, done: int, progress: Callable[[int, int], None] | None) -> None:
        self.store, self.run, self.total, self.done, self.progress = store, run, total, done, progress
        self.written = 0  # rows this run added

    def add(self, unit: Unit, rows: list[ResultRow]) -> None:
        """One configuration's rows of ``unit``."""
        self.store.add(self.run, rows)
        self.written += unit.n_prompts
        self.done += unit.n_prompts
        self.report()

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)


def run_scorer(
    models: Mapping[str, LoadedModel],
    recipient: LoadedModel,
    configs: Sequence[RunConfig],
    work: Sequence[Prompts],
    asks: EvalSpec | None,
    attributes: Mapping[str, frozenset[int]] | None,
    results: Callable[[Sequence[str]], dict[str, dict[str, float]]],
    keep: Keep | None,
) -> UnitScorer:
    """The scorer of a run's units, with the Execution its configurations share: the one place a
    recipe's ``eval`` settings become what readouts are asked for, wherever the run is scored."""
    measures = Measures(target_logprob=bool(asks and asks.target_logprob), generate=asks.generate if asks else 0)
    execution = Execution(models, configs=configs, batches=work, results=results, measures=measures, keep=keep)
    return UnitScorer(execution, configs, recipient, attributes)


class UnitScorer:
    """Scores a configuration on a batch into result rows; each configuration's readout is made
    once, on first use, and kept (with what configurations share, in ``execution``)."""

    def __init__(
        self,
        execution: Execution,
        configs: Sequence[RunConfig],
        recipient: LoadedModel,
        attributes: Mapping[str, frozenset[int]] | None = None,
    ) -> None:
        self.execution = execution
        self.configs = {c.name: c for c in configs}
        self.tokenizer = recipient.tokenizer
        self.attributes = attributes  # prompt id → attribute token ids (eval.metric attribute_rate)
        self._readouts: dict[str, LastLogits] = {}

    def rows(self, name: str, batch: Prompts) -> list[ResultRow]:
        config = self.configs[name]
        if name not in self._readouts:
            self._readouts[name] = method_for(config.kind).readout(config, self.execution)
        model = self.execution.models[config.model]
        with torch.no_grad():
            readout = Readout.of(self._readouts[name](batch.to(model.device)))
        logits = readout.logits  # [batch, vocab]
        scores = score_logits(logits, batch.prompts, keep_top=TOP_TOKENS_KEPT)
        extras: list[dict[str, float]] = [self.execution.extras(name) for _ in batch.prompts]
        if self.attributes is not None:
            rates = attribute_rate(logits, [self.attributes[p.id] for p in batch.prompts], ATTRIBUTE_K)
            extras = [{**e, "attribute_rate": rate} for e, rate in zip(extras, rates)]
        measured = _measured(readout, self.tokenizer, len(batch.prompts))
        return [_row(name, p, s, self.tokenizer, e, *m) for p, s, e, m in zip(batch.prompts, scores, extras, measured)]


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


def _row(
    config: str,
    prompt,
    score,
    tokenizer,
    extra: dict[str, float],
    target_logprob: float | None = None,
    continuation: str | None = None,
) -> ResultRow:
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
