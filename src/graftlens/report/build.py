"""The figures of a run: each panel of configurations drawn by the method that made it."""

from __future__ import annotations

import re
from pathlib import Path

from graftlens import charts
from graftlens.methods import Table, method_for
from graftlens.methods.core.registry import Method
from graftlens.results.rundata import RunData, StoredConfig


def panel_method(configs: list[StoredConfig]) -> Method:
    """The method that draws a panel: its configurations' own (or the one their kind ``draws_with``),
    or the default bar chart when a panel mixes kinds."""
    kinds = {method_for(c.kind).draws_with or c.kind for c in configs}
    return method_for(kinds.pop() if len(kinds) == 1 else "configs")


def make_figures(run: RunData, directory: Path | None = None) -> list[charts.SavedFigure]:
    """Every figure of the run, written as PNG and SVG under ``run_dir/figures``."""
    directory = directory or run.run_dir / "figures"
    by_config = run.by_config
    for stale in [*directory.glob("*.png"), *directory.glob("*.svg")]:
        stale.unlink()  # figures of an earlier report of this run
    saved = []
    for i, (panel, configs) in enumerate(run.panels().items()):
        if not any(c.name in by_config for c in configs):
            continue
        method = panel_method(configs)
        drawn = method.figure(run, panel, configs)
        if drawn is not None:
            fig, title = drawn
            saved.append(charts.save(fig, directory, f"{i:02d}-{_slug(method.figure_name(panel))}", title))
    return saved


def method_tables(run: RunData) -> list[Table]:
    """The extra tables of every panel, from the method that made it."""
    return [t for panel, configs in run.panels().items() if configs for t in panel_method(configs).tables(run, panel, configs)]


SLUG_CHARS = 60  # a figure's file name stays far below file systems' 255-byte limit


def _slug(text: str) -> str:
    """A file-name part for a panel: its letters and digits, at most ``SLUG_CHARS`` of them (the
    figure's number before it keeps names of long panels apart)."""
    slug = re.sub(r"[^0-9a-zA-Z]+", "-", text).strip("-").lower()[:SLUG_CHARS].strip("-")
    return slug or "panel"


def method_files(run: RunData) -> dict[str, str]:
    """The text files every panel's method writes next to the report (a found circuit, ...)."""
    out: dict[str, str] = {}
    for panel, configs in run.panels().items():
        if configs:
            out.update(panel_method(configs).files(run, panel, configs))
    return out
