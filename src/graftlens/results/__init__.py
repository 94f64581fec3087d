"""Results of runs: the SQLite store, metrics with bootstrap intervals, typed run data, exports.

Both the experiment runner (which writes results) and the report (which reads them) depend on
this package; it depends on neither."""

from graftlens.results.metrics import Estimate, bootstrap_ci, estimate, grouped, relative_change, summary
from graftlens.results.opened import Run, open_run
from graftlens.results.rundata import RunData, StoredConfig, load_run
from graftlens.results.store import STORE_NAME, ResultRow, ResultsStore, StoreError

__all__ = [
    "STORE_NAME",
    "Estimate",
    "ResultRow",
    "ResultsStore",
    "Run",
    "RunData",
    "StoreError",
    "StoredConfig",
    "bootstrap_ci",
    "estimate",
    "grouped",
    "load_run",
    "open_run",
    "relative_change",
    "summary",
]
