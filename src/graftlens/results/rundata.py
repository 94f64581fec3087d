"""A finished (or partial) run as the report and the exports read it: typed configurations and rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from graftlens.results.metrics import grouped, summary
from graftlens.results.store import ResultRow, ResultsStore, StoreError


@dataclass(frozen=True)
class StoredConfig:
    """One configuration as the store records it (see ``RunConfig.to_json``).

    ``kind`` names the method that made it (``positions``, ``knockout``, ...); ``coords`` place it
    in that method's figure; ``method`` is the activation-level method's spec as a dict."""

    name: str
    panel: str  # the report's panel (stored and exported as ``group``)
    model: str
    kind: str
    grafts: tuple[dict, ...] = ()
    coords: dict[str, str] = field(default_factory=dict)
    method: dict | None = None

    @property
    def plain(self) -> bool:
        """No grafts and no method: the model as it is (a reference line of the bar charts)."""
        return not self.grafts and not self.method

    @classmethod
    def from_json(cls, d: dict) -> StoredConfig:
        if "kind" not in d:
            raise StoreError(
                f"configuration {d.get('name')!r} was stored without its method kind (by an early graftlens): "
                "rerun its recipe with --restart"
            )
        return cls(
            d["name"],
            d["group"],
            d["model"],
            d["kind"],
            tuple(d.get("grafts", ())),
            dict(d.get("coords", {})),
            d.get("method") or None,
        )


@dataclass
class RunData:
    run_dir: Path
    run_id: str
    recipe: dict
    manifest: dict
    configs: list[StoredConfig]  # expanded configurations, in order
    rows: list[ResultRow]

    @property
    def name(self) -> str:
        return str(self.recipe.get("name", ""))

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

    def reference_configs(self) -> list[StoredConfig]:
        """Configurations without grafts or methods (PRE, SFT, ...): the reference lines of the bar charts."""
        return [c for c in self.configs if c.plain]

    def panels(self) -> dict[str, list[StoredConfig]]:
        """The configurations of each panel of the report, in their order."""
        out: dict[str, list[StoredConfig]] = {}
        for c in self.configs:
            out.setdefault(c.panel, []).append(c)
        return out

    def summary(self, keys=("config",), metrics=("top1", "top5", "top10", "mean_prob", "mean_rank"), configs=None):
        """Estimates per group of ``keys``; ``configs`` (names) limits it to those configurations."""
        rows = self.rows if configs is None else [r for r in self.rows if r.config in configs]
        return summary(rows, keys, metrics, self.n_boot, self.seed)


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
            [StoredConfig.from_json(c) for c in store.configs(str(run_id))],
            store.rows(str(run_id)),
        )
