"""Compute only what an intervention can change: continue a kept run from (layer, column).

An intervention at layer ``l`` leaves every layer below ``l`` as in the plain run, and one
that starts at column ``j`` leaves every column before ``j`` unchanged (attention is causal). So a
sweep of interventions runs the model once (`CachedRun`: the KV cache of every column and
the residual stream entering every layer), then each intervention continues it:

- the columns before ``j`` come from the kept KV cache (the model's own cache objects, so rotary
  and grouped-query attention need nothing special);
- the layers below ``l`` are not run at all: the stream entering layer ``l`` at columns ``≥ j`` is
  taken from the kept run;
- only the last position's logits are computed.

Hooks, edits and knockouts active around `CachedRun.continued` apply as usual, but see
only columns ``≥ j`` of layers ``≥ l``. The caller promises the intervention changes nothing
before (``l``, ``j``); in exchange the logits equal a full pass with the intervention, to float
rounding (tested against the straightforward loop on every family).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from graftlens.interventions.hooks import Edit, PointLike, capture, edit
from graftlens.interventions.knockout import KNOCKOUT_ROWS_PER_PASS, attention_knockout, knockout_edges
from graftlens.interventions.patches import Patch, chained
from graftlens.interventions.points import Point
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.prefix import cache_argument, copied_cache, keeps_every_position
from graftlens.models.run import position_ids_for
from graftlens.positions import PositionsLike, Spans, first_picked_column, resolve_positions


class _Skipped(nn.Module):
    """Stands in for a decoder layer below the start layer: hands on the stream it is given, or,
    as the last skipped layer, the kept stream entering the start layer."""

    def __init__(self, stream: torch.Tensor | None):
        super().__init__()
        self.stream = stream  # [batch, new columns, d_model] or None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states if self.stream is None else self.stream.to(hidden_states.dtype)


@contextmanager
def _layers_skipped(loaded: LoadedModel, below: int, stream: torch.Tensor) -> Iterator[None]:
    """Within the block, layers ``0 .. below-1`` are not run; layer ``below`` receives ``stream``."""
    if below == 0:
        yield
        return
    layers = loaded.model.get_submodule(loaded.adapter.family.layers)  # nn.ModuleList
    kept = [layers[i] for i in range(below)]
    try:
        for i in range(below):
            layers[i] = _Skipped(stream if i == below - 1 else None)
        yield
    finally:
        for i, module in enumerate(kept):
            layers[i] = module


class CachedRun:
    """One plain forward pass of ``model`` on a batch, kept to be continued from any (layer, column).

    ``logits``: ``[batch, vocab]`` at the last column; ``captured``: the activations of ``points``
    (and the streams entering each layer). `continued` runs variants of a batch at once.
    `patched` and `knocked_out` (and their variants) continue it under a patch or a
    knockout."""

    def __init__(
        self,
        model: LoadedModel | nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        points: Iterable[PointLike] = (),
    ):
        from transformers import DynamicCache

        self.model = as_loaded(model)
        self.input_ids = input_ids
        self.attention_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        self.position_ids = position_ids_for(self.attention_mask)
        n = self.model.adapter.n_layers
        self.cache = DynamicCache(config=self.model.model.config)
        streams_at = [f"resid_pre.{layer}" for layer in range(n)]
        with torch.no_grad(), capture(self.model, [*streams_at, *points]) as streams:
            out = self.model.model(
                input_ids=input_ids,
                attention_mask=self.attention_mask,
                position_ids=self.position_ids,
                use_cache=True,
                logits_to_keep=1,
                **{cache_argument(self.model): self.cache},
            )
        self.logits = out.logits[:, -1]
        self.streams = [streams[p] for p in streams_at]  # each [batch, pos, d_model]
        self.captured = streams  # ``points`` (and the streams) of this run, by point
        # A sliding-window layer may have evicted columns: then no column is reused (layers still are).
        self.columns_reusable = keeps_every_position(self.cache, 0, input_ids.shape[1])

    @property
    def n_columns(self) -> int:
        return self.input_ids.shape[1]

    def continued(self, layer: int = 0, column: int = 0, repeat: int = 1) -> torch.Tensor:
        """Logits ``[batch * repeat, vocab]`` at the last column, computing only layers ``≥ layer``
        at columns ``≥ column`` (interventions active around the call apply there).

        With ``repeat``, each row runs ``repeat`` times, consecutively (row ``b`` of variant ``v``
        is row ``b * repeat + v``): many variants of an intervention in one pass."""
        from transformers import DynamicCache

        n = self.model.adapter.n_layers
        if not 0 <= layer < n or not 0 <= column < self.n_columns:
            raise ValueError(
                f"cannot continue from layer {layer}, column {column} (layers 0..{n - 1}, columns 0..{self.n_columns - 1})"
            )
        if not self.columns_reusable:
            column = 0

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(repeat, 0) if repeat > 1 else t

        # Columns [0, column) of the kept cache, each row `repeat` times (an empty cache from column 0).
        cache = copied_cache(self.cache, column, repeat) if column else DynamicCache(config=self.model.model.config)
        stream = rows(self.streams[layer][:, column:])  # [batch * repeat, new, d_model]
        with torch.no_grad(), _layers_skipped(self.model, layer, stream):
            out = self.model.model(
                input_ids=rows(self.input_ids[:, column:]),
                attention_mask=rows(self.attention_mask),
                position_ids=rows(self.position_ids[:, column:]),
                use_cache=True,
                logits_to_keep=1,
                **{cache_argument(self.model): cache},
            )
        return out.logits[:, -1]

    # ---- interventions continued from the kept run ------------------------------------------

    def patched(self, patches: Sequence[Patch], spans: Sequence[Spans] | None = None) -> torch.Tensor:
        """Logits ``[batch, vocab]`` at the last position with every patch written in, like
        `patched_logits`, continued from the lowest patched
        layer and the first patched column."""
        return self.patched_variants([patches], spans)[:, 0]

    def patched_variants(self, patch_sets: Sequence[Sequence[Patch]], spans: Sequence[Spans] | None = None) -> torch.Tensor:
        """Logits ``[batch, variants, vocab]``, one variant per patch set, each equal to
        `patched` of its set: the sets run as variants of one continuation (row ``b`` of
        variant ``v`` at ``b * variants + v``), from the lowest patched layer and the first patched
        column of any set, so the weights are read once for all."""
        mask = self.attention_mask
        batch, variants = mask.shape[0], len(patch_sets)
        resolved = []  # (variant, patch, where [batch, pos])
        for v, patches in enumerate(patch_sets):
            for p in patches:
                everywhere = p.positions is None
                where = torch.ones_like(mask, dtype=torch.bool) if everywhere else resolve_positions(p.positions, mask, spans)
                resolved.append((v, p, where.bool()))
        if not resolved:
            return self.logits[:, None].expand(batch, variants, -1)
        first = min(first_picked_column(where, mask) for _, _, where in resolved)
        if first == self.n_columns:
            return self.logits[:, None].expand(batch, variants, -1)  # no patch touches any position
        column = min(first, self.n_columns - 1)
        layer = min(p.point.layer for _, p, _ in resolved)
        edits: dict[Point, list[Edit]] = {}
        for v, p, where in resolved:
            rows = torch.zeros(batch, variants, where.shape[1], dtype=torch.bool, device=where.device)
            rows[:, v] = where
            value = p.value[:, column:].repeat_interleave(variants, 0)  # [batch * variants, new, ...]
            sliced = Patch(p.point, value, None, p.heads)
            edits.setdefault(p.point, []).append(sliced.as_edit(rows.flatten(0, 1)[:, column:]))

        with edit(self.model, {point: chained(fns) for point, fns in edits.items()}):
            return self.continued(layer, column, repeat=variants).unflatten(0, (batch, variants))

    def knocked_out(
        self, layers: Iterable[int], sources: PositionsLike, targets: PositionsLike = "LT", spans: Sequence[Spans] | None = None
    ) -> torch.Tensor:
        """Logits ``[batch, vocab]`` at the last position under
        `attention_knockout`: a knockout changes nothing
        below its lowest layer, nor before the first target column, so only the rest is computed
        (the kept run itself, bit for bit, when nothing is blocked)."""
        layers = sorted(set(int(layer) for layer in layers))
        mask = self.attention_mask
        edges = knockout_edges(resolve_positions(sources, mask, spans), resolve_positions(targets, mask, spans))
        if not layers or not bool(edges.any()):
            return self.logits  # nothing blocked: the plain run, bit for bit
        column = min(first_picked_column(targets, mask, spans), self.n_columns - 1)
        with attention_knockout(self.model, layers, sources=sources, targets=targets, spans=spans):
            return self.continued(layers[0], column)

    def knocked_out_windows(
        self,
        windows: Sequence[Iterable[int]],
        sources: PositionsLike,
        targets: PositionsLike = "LT",
        spans: Sequence[Spans] | None = None,
    ) -> torch.Tensor:
        """Logits ``[len(windows), batch, vocab]``: one knockout per window of layers (Geva et
        al.'s sweep). Windows run as variants of one pass (up to ``KNOCKOUT_ROWS_PER_PASS`` rows):
        each variant's rows have the edges blocked in its own window's layers only, every variant
        computes the layers from the lowest window start of its pass and the columns from the
        first target."""
        mask = self.attention_mask
        batch = mask.shape[0]
        windows = [sorted(set(int(layer) for layer in w)) for w in windows]
        edges = knockout_edges(resolve_positions(sources, mask, spans), resolve_positions(targets, mask, spans))  # [batch, q, k]
        column = min(first_picked_column(targets, mask, spans), self.n_columns - 1)
        out: list[torch.Tensor] = []
        per_pass = max(1, KNOCKOUT_ROWS_PER_PASS // batch)
        for start in range(0, len(windows), per_pass):
            group = windows[start : start + per_pass]
            active = [w for w in group if w]
            if not active or not bool(edges.any()):
                out += [self.logits] * len(group)
                continue
            layers = sorted({layer for w in active for layer in w})
            per_layer = {}
            for layer in layers:  # [batch * variants, q, k]: the edges of the variants whose window holds the layer
                holds = torch.tensor([layer in w for w in group], device=edges.device)
                per_layer[layer] = (edges[:, None] & holds[None, :, None, None]).flatten(0, 1)
            with ExitStack() as stack:
                for layer, layer_edges in per_layer.items():
                    stack.enter_context(attention_knockout(self.model, [layer], edges=layer_edges))
                logits = self.continued(layers[0], column, repeat=len(group)).unflatten(0, (batch, len(group)))
            out += [logits[:, v] for v in range(len(group))]
        return torch.stack(out)
