"""A finished run directory, opened for analysis: its results as a pandas DataFrame, its manifest, its figures."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from graftlens.results.export import COLUMNS, extra_columns, table_rows
from graftlens.results.rundata import RunData, load_run
from graftlens.results.store import StoreError

if TYPE_CHECKING:
    import pandas as pd

_OPTIONAL = ("target_logprob", "continuation")  # empty in the CSV where not measured; missing (NaN/None) here


@dataclass(frozen=True)
class Run:
    """A run directory that ``graftlens run`` (or `run_recipe`) wrote.

    ``results`` has one row per stored result (configuration × prompt), with the columns of
    ``graftlens export`` (``config``, ``group``, ``template``, ``direction``, ``example``,
    ``prompt``, ``target``, ``target_prob``, ``target_rank``, ``top1``, ``top5``, ``top10``,
    ``top_tokens``, ...); measures not taken are missing values."""

    path: Path
    data: RunData

    @cached_property
    def results(self) -> pd.DataFrame:
        import pandas as pd

        rows = table_rows(self.data)
        for row in rows:
            for key in (*_OPTIONAL, *extra_columns(self.data)):
                if row[key] == "":
                    row[key] = None
        return pd.DataFrame(rows, columns=[*COLUMNS, *extra_columns(self.data)])

    @property
    def manifest(self) -> dict:
        """What made the run: models and their weight fingerprints, data, evaluation settings, command, versions."""
        return self.data.manifest

    @property
    def recipe(self) -> dict:
        return self.data.recipe

    @property
    def figures(self) -> dict[str, Path]:
        """Figure name → its PNG (``figures/*.png``), in name order; empty before the report is drawn."""
        return {p.stem: p for p in sorted((self.path / "figures").glob("*.png"))}

    @property
    def report(self) -> Path | None:
        """The self-contained HTML report, when it has been written."""
        path = self.path / "report.html"
        return path if path.is_file() else None


def open_run(path: str | Path) -> Run:
    """Open a run directory to read its results as a table.

    Args:
        path: the directory ``graftlens run`` (or `run_recipe`) wrote.

    Returns:
        Run: ``results`` (one row per configuration × prompt), its manifest and summaries.

    Raises:
        StoreError: the directory holds no run.

    Examples:
        >>> import graftlens
        >>> graftlens.open_run("no/such/run")
        Traceback (most recent call last):
        ...
        graftlens.errors.StoreError: no/such/run is not a run directory: ...
    """
    if not isinstance(path, str | os.PathLike):
        raise StoreError(f"open_run: path must be a run directory (a str or Path), not {path!r}")
    path = Path(path)
    return Run(path, load_run(path))
