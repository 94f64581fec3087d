"""Drawing primitives of the report (matplotlib, headless): bar charts of configurations × test
templates with bootstrap error bars and reference lines, heat maps, and line charts over layers
with CI bands. Each method picks one of them for its figure.

Figures are built as `matplotlib.figure.Figure` objects with their own Agg canvas, never
through ``pyplot``: importing this module leaves the caller's matplotlib backend and pyplot's
figure registry alone."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from graftlens.results.metrics import Estimate

METRIC_LABELS = {
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "top10": "top-10 accuracy",
    "mean_prob": "mean target probability",
    "mean_rank": "mean target rank",
    "attribute_rate": "attribute rate (top-50)",
}


def _figure(figsize: tuple[float, float]):
    """A constrained-layout figure with one axes, on its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


@dataclass(frozen=True)
class SavedFigure:
    title: str
    png: Path
    svg: Path


def bar_chart(
    title: str,
    configs: Sequence[str],
    templates: Sequence[str],
    values: dict[tuple[str, str], Estimate],
    references: dict[str, Estimate],
    metric: str,
    legend_title: str = "test template / reference",
) -> Figure:
    """One group of bars per configuration, one bar per test template (or per what
    ``legend_title`` names), 95% CI error bars; ``references`` (e.g. PRE and SFT over all
    templates) drawn as labelled dashed lines. A long title is wrapped to the figure's width."""
    width = 0.8 / max(1, len(templates))
    fig, ax = _figure((max(6.0, 1.1 * len(configs) + 2), 4.2))
    x = np.arange(len(configs))
    colors = colormaps["tab10"].colors
    for i, template in enumerate(templates):
        est = [values.get((c, template)) for c in configs]
        heights = [e.value if e else np.nan for e in est]
        err = np.array([[e.value - e.lo, e.hi - e.value] if e else [0, 0] for e in est]).T
        ax.bar(
            x + (i - (len(templates) - 1) / 2) * width,
            heights,
            width,
            yerr=err,
            capsize=2,
            label=template,
            color=colors[i % len(colors)],
            error_kw={"elinewidth": 0.8},
        )
    styles = ["--", ":", "-."]
    for j, (name, est) in enumerate(references.items()):  # in the legend: equal values would overlap as labels
        ax.axhline(est.value, color="0.3", linestyle=styles[j % len(styles)], linewidth=1, label=f"{name} {est.value:.2f}")
    ax.set_xticks(
        x, configs, rotation=30 if max(map(len, configs)) > 6 else 0, ha="right" if max(map(len, configs)) > 6 else "center"
    )
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if metric != "mean_rank":
        ax.set_ylim(0, 1.05)
    ax.set_title("\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 9))), loc="left", fontsize=11)
    ax.legend(
        title=legend_title,
        fontsize=8,
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def line_chart(
    title: str,
    xs: Sequence[str],
    series: dict[str, Sequence[Estimate | None]],
    ylabel: str,
    xlabel: str,
    zero_line: bool = False,
    ylim: tuple[float, float] | None = None,
    legend_title: str | None = None,
) -> Figure:
    """One line per series over ``xs`` (e.g. layers), with its 95% CI as a shaded band."""
    width = max(6.0, 0.22 * len(xs) + 3.5)
    fig, ax = _figure((width, 4.0))
    x = np.arange(len(xs))
    colors = colormaps["tab10"].colors
    for i, (label, ests) in enumerate(series.items()):
        mid = np.array([e.value if e else np.nan for e in ests])
        lo = np.array([e.lo if e else np.nan for e in ests])
        hi = np.array([e.hi if e else np.nan for e in ests])
        color = colors[i % len(colors)]
        ax.plot(x, mid, marker="o", markersize=3, linewidth=1.5, color=color, label=label)
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
    if zero_line:
        ax.axhline(0, color="0.5", linewidth=0.8)
    step = max(1, len(xs) // 15)
    ax.set_xticks(x[::step], [xs[i] for i in range(0, len(xs), step)])
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, int(width * 9))), loc="left", fontsize=11)
    ax.legend(title=legend_title, fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def heatmap(
    title: str,
    rows: Sequence[str],
    cols: Sequence[str],
    values: dict[tuple[str, str], float],
    metric: str,
    xlabel: str,
    ylabel: str = "grafted component",
) -> Figure:
    """A ``rows × cols`` grid of ``values`` with each cell's value written in it."""
    grid = np.array([[values.get((r, c), np.nan) for c in cols] for r in rows])  # [rows, cols]
    width = min(16.0, max(5.0, (0.55 if len(cols) <= 16 else 0.42) * len(cols) + 2.5))
    fig, ax = _figure((width, max(2.6, 0.45 * len(rows) + 1.4)))
    top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0
    if metric == "mean_rank":
        vmax = top
    else:
        # Keep the 0–1 scale comparable across figures unless every value is small: then stretch
        # the colours (and say so) so that a faint pattern is still visible.
        vmax = 1.0 if top >= 0.25 else max(0.05, float(np.ceil(top * 20) / 20))
        if vmax < 1.0:
            title += f" — colour scale 0–{vmax:.2f}"
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    rotate = max(map(len, cols)) > 3
    ax.set_xticks(range(len(cols)), cols, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(len(rows)), rows)
    if len(cols) <= 32:
        dense = len(cols) > 16
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = grid[i, j]
                if not np.isnan(v):
                    text = f"{v:.2f}"
                    text = text[1:] if dense and 0 <= v < 1 else text  # ".04": fits a narrow cell
                    color = "black" if v > 0.6 * vmax else "white"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6 if dense else 8, color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left", fontsize=11)
    fig.colorbar(im, ax=ax, label=METRIC_LABELS.get(metric, metric), shrink=0.9)
    return fig


def save(fig: Figure, directory: Path, stem: str, title: str) -> SavedFigure:
    """Write ``stem.png`` (for the report) and ``stem.svg`` (for papers).

    Both are byte-for-byte reproducible: no creation date, and the SVG's element ids salted with
    the stem instead of a random value (set for this call only, not globally)."""
    import matplotlib

    directory.mkdir(parents=True, exist_ok=True)
    png, svg = directory / f"{stem}.png", directory / f"{stem}.svg"
    fig.savefig(png, dpi=130)
    with matplotlib.rc_context({"svg.hashsalt": f"graftlens-{stem}"}):
        fig.savefig(svg, metadata={"Date": None})
    return SavedFigure(title, png, svg)


def patching_heatmap(sweep, columns: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Layer × position (or layer × head) heat map of an activation-patching sweep's recovered
    fraction (0 = the corrupted run, 1 = the clean run); ``columns`` labels positions (tokens)."""
    recovered = sweep.recovered  # [layer, column]
    n_layers, n_cols = recovered.shape
    cols = list(columns) if columns is not None else [str(j) for j in range(n_cols)]
    if len(cols) != n_cols:
        raise ValueError(f"{len(cols)} column labels for {n_cols} columns")
    rows = [str(i) for i in range(n_layers)]
    values = {(rows[i], cols[j]): float(recovered[i, j]) for i in range(n_layers) for j in range(n_cols)}
    title = title or f"activation patching of {sweep.point_name}: share of the clean run recovered"
    return heatmap(title, rows, cols, values, "recovered (clean = 1)", sweep.by, "layer")


def head_heatmap(
    title: str,
    scores: np.ndarray,
    selected: Sequence[tuple[int, int]],
    label: str,
    sequential: bool = False,
    first_layer: int = 0,
) -> Figure:
    """A layer × head grid of ``scores[layer, head]`` on a diverging scale centred on 0 (with
    ``sequential``, from 0 up: shares, counts), the ``selected`` heads outlined (path patching: the
    heads a stage picks). Row ``i`` is layer ``first_layer + i``."""
    n_layers, n_heads = scores.shape
    fig, ax = _figure((max(4.5, 0.42 * n_heads + 2.6), max(3.2, 0.2 * n_layers + 1.4)))
    finite = np.abs(scores[np.isfinite(scores)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    name, vmin = ("Blues", 0.0) if sequential else ("RdBu", -vmax)
    cmap = colormaps[name].copy()
    cmap.set_bad("0.85")  # no value: grey, told apart from 0
    im = ax.imshow(scores, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    for layer, head in selected:
        ax.add_patch(_outline(head, layer - first_layer))
    ax.set_xticks(range(n_heads))
    rows = range(0, n_layers, max(1, n_layers // 15))
    ax.set_yticks(rows, [str(first_layer + r) for r in rows])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    fig.colorbar(im, ax=ax, label=label, shrink=0.85)
    return fig


def _outline(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.4)


def circuit_diagram(
    title: str, groups: Sequence[tuple[str, str, Sequence[tuple[int, int]]]], edges: Sequence[tuple[int, int, str]]
) -> Figure:
    """Head groups as boxes from left to right (``(name, positions, heads)``), arrows ``(from,
    to, label)`` between them (group indices; ``len(groups)`` is the output logits)."""
    n = len(groups)
    fig, ax = _figure((max(6.0, 1.9 * (n + 1)), 2.9))
    ax.set_xlim(-0.5, n + 0.5)
    ax.set_ylim(-0.9, 0.9)
    ax.axis("off")
    colors = colormaps["tab10"].colors
    for i, (name, positions, heads) in enumerate(groups):
        listed = ", ".join(f"{la}.{h}" for la, h in heads[:12]) + (" …" if len(heads) > 12 else "")
        text = f"{name}\n@ {positions}\n{len(heads)} heads\n" + "\n".join(textwrap.wrap(listed, 22))
        box = {"boxstyle": "round,pad=0.5", "facecolor": (*colors[i % 10][:3], 0.18), "edgecolor": colors[i % 10]}
        ax.text(i, 0, text, ha="center", va="center", fontsize=7.5, bbox=box)
    ax.text(n, 0, "logits", ha="center", va="center", fontsize=9, bbox={"boxstyle": "round,pad=0.5", "facecolor": "white"})
    for a, b, label in edges:
        ax.annotate("", xy=(b - 0.42, 0.0), xytext=(a + 0.42, 0.0), arrowprops={"arrowstyle": "->", "linewidth": 1.3})
        ax.text((a + b) / 2, 0.18, label, ha="center", va="bottom", fontsize=7.5)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    return fig
