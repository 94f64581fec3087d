"""The figures of a run: each group of configurations drawn by the method that made it."""

from __future__ import annotations

import re
from pathlib import Path

from graftlens import charts
from graftlens.methods import Table, method_for
from graftlens.methods.registry import Method
from graftlens.results.rundata import RunData, StoredConfig


def group_method(configs: list[StoredConfig]) -> Method:
    """The method that draws a group: its configurations' own, or the default bar chart when a
    group mixes kinds."""
    kinds = {c.kind for c in configs}
    return method_for(kinds.pop() if len(kinds) == 1 else "configs")


def make_figures(run: RunData, directory: Path | None = None) -> list[charts.SavedFigure]:
    """Every figure of the run, written as PNG and SVG under ``run_dir/figures``."""
    directory = directory or run.run_dir / "figures"
    by_config = run.by_config
    for stale in [*directory.glob("*.png"), *directory.glob("*.svg")]:
        stale.unlink()  # figures of an earlier report of this run
    saved = []
    for i, (group, configs) in enumerate(run.groups().items()):
        if not any(c.name in by_config for c in configs):
            continue
        drawn = group_method(configs).figure(run, group, configs)
        if drawn is not None:
            fig, title = drawn
            saved.append(charts.save(fig, directory, f"{i:02d}-{_slug(group)}", title))
    return saved


def method_tables(run: RunData) -> list[Table]:
    """The extra tables of every group, from the method that made it."""
    return [t for group, configs in run.groups().items() if configs for t in group_method(configs).tables(run, group, configs)]


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "-", text).strip("-").lower() or "group"


def method_files(run: RunData) -> dict[str, str]:
    """The text files every group's method writes next to the report (a found circuit, ...)."""
    out: dict[str, str] = {}
    for group, configs in run.groups().items():
        if configs:
            out.update(group_method(configs).files(run, group, configs))
    return out
