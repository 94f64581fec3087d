"""Figure helpers the methods share: a group as a bar chart per test template, as a heat map of
two coordinates, or as curves over layers (drawn with `graftlens.charts`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftlens.results.metrics import Estimate, estimate, grouped

if TYPE_CHECKING:
    from graftlens.results.rundata import RunData, StoredConfig

# graftlens.charts (matplotlib) is imported where a figure is drawn: method modules load without
# it, so reading a recipe stays fast.


def metric_label(metric: str) -> str:
    from graftlens import charts

    return charts.METRIC_LABELS.get(metric, metric)


def bar_chart_of(run: RunData, panel: str, configs: list[StoredConfig]):
    """Bars per test template for each configuration of the panel; plain configurations as reference lines."""
    from graftlens import charts

    by_config = run.by_config
    references = {
        c.name: estimate(by_config[c.name], run.metric, run.n_boot, run.seed)
        for c in run.reference_configs()
        if c.name in by_config
    }
    if all(c.plain for c in configs) and len(run.panels()) > 1:
        return None  # reference configurations only: they appear as lines and bars elsewhere
    names = [c.name for c in configs if c.name in by_config]
    shown = list(dict.fromkeys([*references, *names]))
    groups = grouped([r for r in run.rows if r.config in shown], "config", "template")
    values = {key: estimate(rows, run.metric, run.n_boot, run.seed) for key, rows in groups.items()}
    title = f"{run.name}: {panel} ({metric_label(run.metric)}, 95% CI)"
    return charts.bar_chart(title, shown, run.templates, values, references, run.metric), title


def heatmap_of(
    run: RunData,
    panel: str,
    configs: list[StoredConfig],
    col_keys: tuple[str, ...],
    xlabel: str,
    row_key: str = "component",
    ylabel: str = "grafted component",
):
    """Rows ``coords[row_key]`` × columns of the ``col_keys`` coordinates (joined by " @ ")."""
    from graftlens import charts

    def col(c: StoredConfig) -> str:
        return " @ ".join(c.coords[k] for k in col_keys)

    rows = list(dict.fromkeys(c.coords[row_key] for c in configs))
    cols = list(dict.fromkeys(col(c) for c in configs))
    by_config = run.by_config
    values = {
        (c.coords[row_key], col(c)): estimate(by_config[c.name], run.metric, 0).value for c in configs if c.name in by_config
    }
    positions = {g["positions"] for c in configs for g in c.grafts}
    where = f" at {', '.join(sorted(positions))}" if positions else ""
    title = f"{run.name}: {panel}{where} ({metric_label(run.metric)})"
    return charts.heatmap(title, rows, cols, values, run.metric, xlabel, ylabel), title


def curves(configs: list[StoredConfig], key: str, values: dict[tuple[str, str], Estimate]):
    """``(layers, {label: [estimate per layer]})`` of configurations with ``coords[key]`` and ``coords["layer"]``."""
    layers = list(dict.fromkeys(c.coords["layer"] for c in configs))
    labels = list(dict.fromkeys(c.coords[key] for c in configs))
    return layers, {label: [values.get((label, layer)) for layer in layers] for label in labels}
