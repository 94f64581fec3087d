"""``head_mappings``: subject → attribute mappings in attention heads (Geva et al.). For every
head of the chosen (upper) layers, its value–output map applied to the subject's last-token
representation — the stream entering the head's layer, and the token's embedding — projected to
the vocabulary; and the extraction events of those layers' attention outputs at the last position.
An event *has a mapping* when some head of the extracting layer ranks the answer within ``top_k``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field, field_validator

from graftlens.methods.core import resources
from graftlens.methods.core.parts import Fits, LayerSpec, RunConfig, Strict, Sweep, check_positions, shared_fields, sweep_layers
from graftlens.methods.core.registry import Execution, Method, Table, register
from graftlens.results.metrics import Estimate, bootstrap_ci

if TYPE_CHECKING:
    import torch

    from graftlens.eval.batching import Prompts
    from graftlens.eval.scoring import LastLogits
    from graftlens.models import LoadedModel
    from graftlens.results.rundata import RunData, StoredConfig
    from graftlens.results.store import ResultRow

MappingSource = Literal["hidden", "embedding"]
SOURCE_LABELS = {"hidden": "the subject's representation", "embedding": "the subject token's embedding"}
EXAMPLES = 3  # examples listed per head in the report


class HeadMappingRead(Strict):
    """What a head-mappings sweep and each of its configurations share: where and how maps are read."""

    subject: str = "subject"
    """the subject's positions (its last token is mapped)"""
    position: str = "LT"
    """where each layer's attention output is read: a position selector (`FE`, `LT`, `subject`, `(FE+LT)^C`, ...)"""
    top_k: Annotated[int, Fits("vocab")] = Field(10, ge=1)
    """tokens of each map's projection kept"""
    final_norm: bool = True
    """apply the final norm before the unembedding"""

    _positions = field_validator("subject", "position")(check_positions)


class HeadMappingSpec(HeadMappingRead):
    kind: Literal["head_mappings"] = "head_mappings"
    read: Literal["event", "hidden", "embedding"]  # the layer's attention output, or one head's mapping
    layer: int
    head: int | None = None
    layers: list[int]  # every layer of the sweep (one pass reads them all)


class HeadMappingSweep(HeadMappingRead, Sweep):
    """Every head of ``layers``: its value–output map of the subject, for each source; each layer's
    attention output at ``position`` (its extraction events)."""

    kind: Literal["head_mappings"]
    layers: Annotated[LayerSpec, Fits("selection")] = "half2"
    """the layers whose heads are mapped"""
    sources: list[MappingSource] = Field(["hidden", "embedding"], min_length=1)
    """`hidden` (the stream entering the layer) or `embedding` (the token's embedding)"""
    panel: str = "head mappings"
    """the report's figure its configurations are drawn in"""


@register
class HeadMappings(Method[HeadMappingSpec]):
    kind = "head_mappings"
    sweep = HeadMappingSweep
    needs_depth = True
    needs_heads = True
    summarised = False  # hundreds of heads: shown as heat maps and tables

    def expand(
        self, sweep: HeadMappingSweep, recipient: str, n_layers: int | None, n_heads: int | None = None
    ) -> list[RunConfig]:
        assert n_layers is not None and n_heads is not None
        layers = sweep_layers(sweep, "layers", n_layers)
        common = dict(layers=layers, **shared_fields(sweep, HeadMappingRead))
        out = [
            RunConfig(
                name=f"attention output @ {sweep.position} @ L{layer}",
                panel=sweep.panel,
                model=recipient,
                coords={"read": "event", "layer": str(layer), "head": ""},
                method=HeadMappingSpec(read="event", layer=layer, **common),
                kind=self.kind,
            )
            for layer in layers
        ]
        for source in sweep.sources:
            out += [
                RunConfig(
                    name=f"head {layer}.{head} maps {sweep.subject} ({source})",
                    panel=sweep.panel,
                    model=recipient,
                    coords={"read": source, "layer": str(layer), "head": str(head)},
                    method=HeadMappingSpec(read=source, layer=layer, head=head, **common),
                    kind=self.kind,
                )
                for layer in layers
                for head in range(n_heads)
            ]
        return out

    def check(self, config: RunConfig[HeadMappingSpec], models: Mapping[str, LoadedModel]) -> list[str]:
        spec = config.method
        return [spec.subject, spec.position]

    def readout(self, config: RunConfig[HeadMappingSpec], execution: Execution) -> LastLogits:
        model, spec = execution.models[config.model], config.method

        def events(batch: Prompts) -> torch.Tensor:
            """``[batch, len(layers), d_model]``: each layer's attention output at ``position``."""
            import torch

            from graftlens.interventions.hooks import capture
            from graftlens.interventions.lens import at_last_picked
            from graftlens.models.run import run_logits

            points = [f"attn_out.{layer}" for layer in spec.layers]
            with capture(model, points) as cache:
                run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)
            stacked = torch.stack([cache[p] for p in points], 2)  # [batch, pos, layer, d_model]
            return at_last_picked(stacked, spec.position, batch.attention_mask, batch.spans)

        def mappings(batch: Prompts) -> torch.Tensor:
            from graftlens.interventions.mappings import head_mapping_vectors

            return head_mapping_vectors(
                model, batch.input_ids, batch.attention_mask, spec.layers, spec.subject, spec.read, spans=batch.spans
            )

        def run(batch: Prompts) -> torch.Tensor:
            from graftlens.interventions.lens import project

            index = spec.layers.index(spec.layer)
            if spec.read == "event":
                return project(
                    model,
                    execution.for_batch(resources.HeadMappingEvents(), batch, lambda: events(batch))[:, index],
                    spec.final_norm,
                )
            vectors = execution.for_batch(resources.HeadMappingVectors(spec.read), batch, lambda: mappings(batch))
            return project(model, vectors[:, index, spec.head], spec.final_norm)

        return run

    def figure(self, run: RunData, panel: str, configs: list[StoredConfig]):
        table = MappingTable.of(run, configs)
        if table is None:
            return None
        source = table.sources[0]
        first = min(table.events)
        scores = np.full((table.n_layers - first, table.n_heads), np.nan)  # [layer - first, head]
        for (s, layer, head), share in table.event_share().items():
            if s == source:
                scores[layer - first, head] = share
        title = (
            f"{run.name}: {panel} — share of extraction events at each layer whose head's value–output map of "
            f"{SOURCE_LABELS[source]} ranks the answer in the top {table.top_k} (grey: no event at that layer)"
        )
        from graftlens import charts

        fig = charts.head_heatmap(title, scores, [], "share of the layer's extraction events", sequential=True, first_layer=first)
        return fig, title

    def tables(self, run: RunData, panel: str, configs: list[StoredConfig]) -> list[Table]:
        table = MappingTable.of(run, configs)
        return [] if table is None else [table.summary(panel, run), *(table.top_heads(panel, s) for s in table.sources)]


class MappingTable:
    """The stored rows of one head-mapping sweep, read as events and mappings."""

    def __init__(
        self,
        events: dict[int, list[ResultRow]],
        heads: dict[tuple[str, int, int], list[ResultRow]],
        top_k: int,
        n_layers: int,
        n_heads: int,
    ):
        self.events = events  # layer → its attention-output rows
        self.heads = heads  # (source, layer, head) → the head's mapping rows
        self.top_k = top_k
        self.n_layers, self.n_heads = n_layers, n_heads
        self.sources = list(dict.fromkeys(s for s, _, _ in heads))

    @classmethod
    def of(cls, run: RunData, configs: list[StoredConfig]) -> MappingTable | None:
        by_config = run.by_config
        events, heads = {}, {}
        for c in configs:
            if c.name not in by_config or not c.method:
                continue
            layer = int(c.coords["layer"])
            if c.coords["read"] == "event":
                events[layer] = by_config[c.name]
            else:
                heads[(c.coords["read"], layer, int(c.coords["head"]))] = by_config[c.name]
        if not events or not heads:
            return None
        spec = next(c.method for c in configs if c.method)
        n_layers = max(layer for _, layer, _ in heads) + 1
        n_heads = max(head for _, _, head in heads) + 1
        return cls(events, heads, int(spec["top_k"]), n_layers, n_heads)

    def event_list(self) -> list[tuple[int, str]]:
        """Every extraction event: (layer, fact) where the layer's attention output ranks the answer first."""
        return [(layer, r.example) for layer, rows in sorted(self.events.items()) for r in rows if r.hit(1)]

    def mapped(self, source: str) -> dict[tuple[int, int], set[str]]:
        """(layer, head) → the facts whose answer the head's map of ``source`` ranks within top_k."""
        return {
            (layer, head): {r.example for r in rows if r.hit(self.top_k)}
            for (s, layer, head), rows in self.heads.items()
            if s == source
        }

    def event_share(self) -> dict[tuple[str, int, int], float]:
        """(source, layer, head) → the share of the layer's extraction events the head maps."""
        out = {}
        events = self.event_list()
        for source in self.sources:
            for (layer, head), facts in self.mapped(source).items():
                mine = [fact for lay, fact in events if lay == layer]
                out[(source, layer, head)] = len([f for f in mine if f in facts]) / len(mine) if mine else float("nan")
        return out

    def summary(self, panel: str, run: RunData) -> Table:
        events = self.event_list()
        rows: list[tuple[str, list[Estimate | int | str | None]]] = []
        for source in self.sources:
            mapped = self.mapped(source)
            hit = np.array(
                [float(any(fact in facts for (lay, _), facts in mapped.items() if lay == layer)) for layer, fact in events]
            )
            facts = {r.example for rows in self.events.values() for r in rows}
            any_head = np.array([float(any(fact in f for f in mapped.values())) for fact in sorted(facts)])
            share = _mean(hit, run)
            rows.append((SOURCE_LABELS[source], [len(events), share, _mean(any_head, run)]))
        return Table(
            f"{panel}: extraction events whose layer has a head mapping the subject to the answer (top {self.top_k})",
            "value–output map of",
            ["extraction events", "share with a mapping head", "facts with a mapping head in any layer"],
            rows,
        )

    def top_heads(self, panel: str, source: str, n: int = 8) -> Table:
        """The heads whose map of ``source`` ranks the answer within top_k for most facts, with examples."""
        events = set(self.event_list())
        counted = []
        for (layer, head), facts in self.mapped(source).items():
            in_events = len([f for f in facts if (layer, f) in events])
            counted.append((len(facts), in_events, layer, head))
        counted.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
        rows: list[tuple[str, list[Estimate | int | str | None]]] = []
        for total, in_events, layer, head in counted[:n]:
            if total == 0:
                break
            examples = [r for r in self.heads[(source, layer, head)] if r.hit(self.top_k)][:EXAMPLES]
            shown = "; ".join(
                f"{r.prompt.strip()} →{r.target} (rank {r.target_rank}; top: {_tokens(r.top_tokens[:3])})" for r in examples
            )
            rows.append((f"L{layer}.H{head}", [total, in_events, shown]))
        return Table(
            f"{panel}: heads whose map of {SOURCE_LABELS[source]} ranks the answer in the top {self.top_k} most often",
            "head",
            ["facts", "of them extraction events at its layer", "examples (prompt → answer)"],
            rows,
        )


def _tokens(tokens: tuple[str, ...]) -> str:
    return " ".join(repr(t) for t in tokens)


def _mean(values: np.ndarray, run: RunData) -> Estimate | None:
    if len(values) == 0:
        return None
    lo, hi = bootstrap_ci(values, run.n_boot, run.seed)
    return Estimate(float(values.mean()), lo, hi)
