"""A run's results as the report shows them: loaded from the store, summarised with bootstrap
intervals, and drawn (which figure a group of configurations gets follows from its shape)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from graftlens.experiments.metrics import Estimate, estimate, grouped, relative_change, summary
from graftlens.experiments.store import ResultRow, ResultsStore, StoreError
from graftlens.report import figures


@dataclass
class RunData:
    run_dir: Path
    run_id: str
    recipe: dict
    manifest: dict
    configs: list[dict]  # expanded configurations, in order (see RunConfig.to_json)
    rows: list[ResultRow]

    @property
    def metric(self) -> str:
        return self.recipe.get("eval", {}).get("metric", "top5")

    @property
    def n_boot(self) -> int:
        return int(self.recipe.get("eval", {}).get("bootstrap", 1000))

    @property
    def seed(self) -> int:
        return int(self.recipe.get("seed", 0))

    @property
    def templates(self) -> list[str]:
        return list(dict.fromkeys(r.template for r in self.rows))

    @property
    def expected_rows(self) -> int:
        return len(self.configs) * int(self.manifest.get("n_prompts", 0))

    @cached_property
    def by_config(self) -> dict[str, list[ResultRow]]:
        """The rows of each configuration (grouped once, for every figure and table)."""
        return {key[0]: rows for key, rows in grouped(self.rows, "config").items()}

    def reference_configs(self) -> list[dict]:
        """Configurations without grafts or methods (PRE, SFT, ...): the reference lines of the bar charts."""
        return [c for c in self.configs if not c["grafts"] and not c.get("method")]

    def groups(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for c in self.configs:
            out.setdefault(c["group"], []).append(c)
        return out

    def summary(self, keys=("config",), metrics=("top1", "top5", "top10", "mean_prob", "mean_rank")):
        return summary(self.rows, keys, metrics, self.n_boot, self.seed)


def load_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    with ResultsStore.open_existing(run_dir) as store:
        run_id = store.get_meta("run")
        if run_id is None:
            raise StoreError(f"{run_dir} holds no run yet (it was stopped before its first configuration was set up)")
        return RunData(
            run_dir,
            str(run_id),
            dict(store.get_meta("recipe") or {}),
            dict(store.get_meta("manifest") or {}),
            store.configs(str(run_id)),
            store.rows(str(run_id)),
        )


def make_figures(run: RunData, directory: Path | None = None) -> list[figures.SavedFigure]:
    """Every figure of the run, written as PNG and SVG under ``run_dir/figures``."""
    directory = directory or run.run_dir / "figures"
    metric = run.metric
    by_config = run.by_config
    references = {c["name"]: estimate(by_config[c["name"]], metric, run.n_boot, run.seed)
                  for c in run.reference_configs() if c["name"] in by_config}  # fmt: skip
    groups = run.groups()
    for stale in [*directory.glob("*.png"), *directory.glob("*.svg")]:
        stale.unlink()  # figures of an earlier report of this run
    saved = []
    for i, (group, configs) in enumerate(groups.items()):
        names = [c["name"] for c in configs if c["name"] in by_config]
        if not names:
            continue
        coords = [c["coords"] for c in configs]
        stem = f"{i:02d}-{_slug(group)}"
        if all("component" in k and "layers" in k for k in coords):
            fig, title = _heatmap(run, group, configs, by_config, ("layers",), "grafted layers")
        elif all("component" in k and "layer" in k for k in coords):
            fig, title = _heatmap(run, group, configs, by_config, ("layer",), "centre of the grafted layer window")
        elif all("points" in k and "layers" in k and "positions" in k for k in coords):
            fig, title = _heatmap(run, group, configs, by_config, ("layers", "positions"), "patched layers @ positions",
                                  row_key="points", ylabel="patched from the donor")  # fmt: skip
        elif all("source" in k and "layer" in k for k in coords):
            fig, title = _knockout_curves(run, group, configs)
        elif all("point" in k and "layer" in k for k in coords):
            fig, title = _lens_curves(run, group, configs, by_config)
        else:
            grafted = [c["name"] for c in configs if c["grafts"] or c.get("method")]
            if not grafted and len(groups) > 1:
                continue  # reference configurations only: they appear as lines and bars elsewhere
            shown = list(dict.fromkeys([*references, *names]))
            values = _per_template(run, shown)
            title = f"{run.recipe.get('name', '')}: {group} ({figures.METRIC_LABELS.get(metric, metric)}, 95% CI)"
            fig = figures.bar_chart(title, shown, run.templates, values, references, metric)
        saved.append(figures.save(fig, directory, stem, title))
    return saved


def _per_template(run: RunData, configs: list[str]) -> dict[tuple[str, str], Estimate]:
    groups = grouped([r for r in run.rows if r.config in configs], "config", "template")
    return {key: estimate(rows, run.metric, run.n_boot, run.seed) for key, rows in groups.items()}


def _heatmap(run: RunData, group: str, configs: list[dict], by_config: dict, col_keys: tuple[str, ...], xlabel: str,
             row_key: str = "component", ylabel: str = "grafted component"):  # fmt: skip
    """Rows ``coords[row_key]`` × columns of the ``col_keys`` coordinates (joined by " @ ")."""

    def col(c: dict) -> str:
        return " @ ".join(c["coords"][k] for k in col_keys)

    rows = list(dict.fromkeys(c["coords"][row_key] for c in configs))
    cols = list(dict.fromkeys(col(c) for c in configs))
    values = {}
    for c in configs:
        if c["name"] in by_config:
            values[(c["coords"][row_key], col(c))] = estimate(by_config[c["name"]], run.metric, 0).value
    positions = {g["positions"] for c in configs for g in c["grafts"]}
    where = f" at {', '.join(sorted(positions))}" if positions else ""
    title = f"{run.recipe.get('name', '')}: {group}{where} ({figures.METRIC_LABELS.get(run.metric, run.metric)})"
    return figures.heatmap(title, rows, cols, values, run.metric, xlabel, ylabel), title


def knockout_table(run: RunData, configs: list[dict]) -> dict[tuple[str, str], Estimate]:
    """``(source, layer) → relative change (%)`` of the target probability against each knockout's baseline."""
    by_config = run.by_config
    out = {}
    for c in configs:
        k = c["coords"]
        if c["name"] in by_config and k["baseline"] in by_config:
            out[(k["source"], k["layer"])] = relative_change(by_config[c["name"]], by_config[k["baseline"]], run.n_boot, run.seed)
    return out


def _curves(configs: list[dict], key: str, values: dict[tuple[str, str], Estimate]):
    layers = list(dict.fromkeys(c["coords"]["layer"] for c in configs))
    labels = list(dict.fromkeys(c["coords"][key] for c in configs))
    return layers, {label: [values.get((label, layer)) for layer in layers] for label in labels}


def _knockout_curves(run: RunData, group: str, configs: list[dict]):
    values = knockout_table(run, configs)
    layers, series = _curves(configs, "source", values)
    windows = {len(c["method"]["layers"]) for c in configs if c.get("method")}
    window = f", window of {max(windows)} layers" if windows else ""
    targets = next((c["method"]["targets"] for c in configs if c.get("method")), "LT")
    title = f"{run.recipe.get('name', '')}: {group} — attention edges {targets} → source blocked{window} (95% CI)"
    fig = figures.line_chart(title, layers, series, "change in target probability (%)", "centre layer of the window",
                             zero_line=True, legend_title="blocked source")  # fmt: skip
    return fig, title


def _lens_curves(run: RunData, group: str, configs: list[dict], by_config: dict):
    values = {(c["coords"]["point"], c["coords"]["layer"]): estimate(by_config[c["name"]], run.metric, run.n_boot, run.seed)
              for c in configs if c["name"] in by_config}  # fmt: skip
    layers, series = _curves(configs, "point", values)
    label = figures.METRIC_LABELS.get(run.metric, run.metric)
    title = f"{run.recipe.get('name', '')}: {group} — target in the projection ({label}, 95% CI)"
    top = max((e.hi for e in values.values() if e.hi == e.hi), default=1.0)
    # A 0–1 axis unless every rate is small: then the axis is stretched (its ticks say so).
    ylim = None if run.metric == "mean_rank" else (0.0, 1.05 if top >= 0.25 else max(0.05, 1.2 * top))
    fig = figures.line_chart(title, layers, series, f"{label} of the projection", "layer", ylim=ylim, legend_title="projected")
    return fig, title


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "-", text).strip("-").lower() or "group"
