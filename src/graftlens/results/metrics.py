"""Metrics of stored results with bootstrap 95% confidence intervals.

Each metric is a mean over examples (top-k hit = 0/1, target probability, target rank, and
measures stored beside them such as the attribute rate); its
interval is the 2.5th–97.5th percentile of the means of ``n_boot`` resamples of the examples
(with replacement), drawn from a seeded generator so reports are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from graftlens.errors import StoreError
from graftlens.results.store import ResultRow

METRICS: dict[str, Callable[[ResultRow], float]] = {
    "top1": lambda r: float(r.hit(1)),
    "top5": lambda r: float(r.hit(5)),
    "top10": lambda r: float(r.hit(10)),
    "mean_prob": lambda r: r.target_prob,
    "mean_rank": lambda r: float(r.target_rank),
    "attribute_rate": lambda r: _extra(r, "attribute_rate"),
}


def _extra(row: ResultRow, name: str) -> float:
    try:
        return float(row.extra[name])
    except KeyError:
        raise StoreError(
            f"result {row.config!r}/{row.example!r} has no {name!r}: the run was not scored with that metric"
        ) from None


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``; ``(mean, mean)`` when ``n_boot`` is 0."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    if n_boot == 0 or len(values) == 1:
        m = float(values.mean())
        return (m, m)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))  # [n_boot, n]
    means = values[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def estimate(rows: Sequence[ResultRow], metric: str, n_boot: int = 1000, seed: int = 0) -> Estimate:
    values = np.array([METRICS[metric](r) for r in rows])
    lo, hi = bootstrap_ci(values, n_boot, seed)
    return Estimate(float(values.mean()) if len(values) else float("nan"), lo, hi)


def grouped(rows: Sequence[ResultRow], *keys: str) -> dict[tuple[str, ...], list[ResultRow]]:
    """Rows grouped by the values of ``keys`` (``"config"``, ``"template"``, ``"direction"``), in first-seen order."""
    out: dict[tuple[str, ...], list[ResultRow]] = {}
    for r in rows:
        out.setdefault(tuple(getattr(r, k) for k in keys), []).append(r)
    return out


def summary(
    rows: Sequence[ResultRow],
    keys: Sequence[str] = ("config",),
    metrics: Sequence[str] = ("top1", "top5", "mean_prob"),
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[tuple[str, ...], dict[str, Estimate | int]]:
    """``{group: {"n": count, metric: Estimate, ...}}`` for each group of ``keys``."""
    out: dict[tuple[str, ...], dict[str, Estimate | int]] = {}
    for key, group in grouped(rows, *keys).items():
        entry: dict[str, Estimate | int] = {"n": len(group)}
        for m in metrics:
            entry[m] = estimate(group, m, n_boot, seed)
        out[key] = entry
    return out


def relative_change(rows: Sequence[ResultRow], baseline: Sequence[ResultRow], n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean relative change (%) of each example's target probability against ``baseline``'s
    (the knockout metric of Geva et al.), paired by example, with a bootstrap interval."""
    base = {r.example: r.target_prob for r in baseline}
    values = np.array([100.0 * (r.target_prob / base[r.example] - 1.0) for r in rows if base.get(r.example, 0) > 0])
    lo, hi = bootstrap_ci(values, n_boot, seed)
    return Estimate(float(values.mean()) if len(values) else float("nan"), lo, hi)


def ratio_estimate(rows: Sequence[ResultRow], baseline: Sequence[ResultRow], n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Top-1 accuracy of ``rows`` over that of ``baseline`` (faithfulness), with a bootstrap
    interval: prompts resampled together when both score the same prompts, separately otherwise."""
    num = np.array([r.hit(1) for r in rows], dtype=float)
    den = np.array([r.hit(1) for r in baseline], dtype=float)
    value = float(num.mean() / den.mean()) if len(num) and den.mean() > 0 else float("nan")
    if n_boot <= 0 or not len(num) or not len(den):
        return Estimate(value, value, value)
    rng = np.random.default_rng(seed)
    paired = [r.example for r in rows] == [r.example for r in baseline]
    ratios = []
    for _ in range(n_boot):
        i = rng.integers(0, len(num), len(num))
        j = i if paired else rng.integers(0, len(den), len(den))
        d = den[j].mean()
        if d > 0:
            ratios.append(num[i].mean() / d)
    if not ratios:
        return Estimate(value, float("nan"), float("nan"))
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return Estimate(value, float(lo), float(hi))
