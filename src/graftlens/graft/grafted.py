"""The replacement forwards the engine installs: one module, or one position-wise block, run with
each owner's weights on the positions that owner claims.

Rows (flat ``batch*pos`` indices) are grouped by who owns each segment of a module there; each
group's rows are gathered, computed with the owners' weights, and copied back to their places.
Copies, not the split matrix products, are what the engine itself adds to a CPU forward
(``benchmarks/bench_graft.py`` times the products alone, ``bench_graft_copies.py`` the copies);
these keep them few:

- Norms and embeddings, which cost less to compute than to copy, are computed whole by the
  owner of most positions, and only the other owners' rows are patched in.
- A gather is shared: the projections that read the same tensor (q, k, v) with the same
  grouping gather its rows once.
- A plain linear module writes each group's product straight into one grouped output, which
  is read back in position order with one gather.
- The MLP is grafted as one block: its input is gathered once and its output copied back once,
  and gate/up/down compute each group with that group's owners, so the wide hidden activations
  are never copied.
- A wide linear output (the unembedding) is computed in chunks of columns, each copied back
  while it is still in cache.

Padded positions, which no real position reads, are left out of the groups altogether (norms
and embeddings, computed whole, compute them as the plain forward does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.graft.donors import module_params
from graftlens.graft.rules import ModulePlan
from graftlens.models.adapters import Rows, rows_index

WIDE_OUTPUT = 8  # out_features / in_features from which a linear output is computed in column chunks
CHUNK_BYTES = 4 << 20  # one column chunk of a wide output, all rows: small enough to stay in cache
MIN_CHUNK_COLUMNS = 64


def twin(module: nn.Module, params: Mapping[str, torch.Tensor]) -> nn.Module:
    """A shallow copy of ``module`` whose parameters are ``params`` (no data copied)."""
    clone = object.__new__(type(module))  # what copy.copy does for a module, without its generic protocol
    clone.__dict__.update(module.__dict__)
    clone.__dict__.pop("forward", None)
    # Keep every registered name (a Linear without bias registers bias=None).
    clone.__dict__["_parameters"] = {name: params.get(name) for name in module._parameters}
    return clone


@dataclass
class PositionGroups:
    """Positions (flat ``batch*pos`` indices) grouped by who owns each segment there.

    ``order`` lists the real positions group after group; ``bounds[g]:bounds[g+1]`` is group
    ``g``'s slice of it, ``owners[g]`` its owner per segment. ``skipped`` holds the padded
    positions, which no real position reads: when rows are split among owners they are left
    out, and their output rows are zero (with one owner everywhere, every row is computed).
    """

    owners: list[tuple[int, ...]]
    bounds: list[int]
    order: torch.Tensor  # [n_real]
    skipped: torch.Tensor | None = None  # [n_pad]
    _inverse: torch.Tensor | None = None  # [batch*pos]

    @property
    def inverse(self) -> torch.Tensor:
        """``LongTensor[batch*pos]``: each position's row in the group order; padded positions
        point one past the real rows (where `BatchState.scatter` puts a zero row)."""
        if self._inverse is None:
            n_real = len(self.order)
            n_all = n_real + (0 if self.skipped is None else len(self.skipped))
            inverse = torch.empty(n_all, dtype=torch.long, device=self.order.device)
            inverse[self.order] = torch.arange(n_real, device=self.order.device)
            if self.skipped is not None:
                inverse[self.skipped] = n_real
            self._inverse = inverse
        return self._inverse

    def span(self, g: int) -> slice:
        """Group ``g``'s slice of ``order`` (and of any tensor laid out in group order)."""
        return slice(self.bounds[g], self.bounds[g + 1])

    @property
    def single_owner(self) -> int | None:
        """The owner of every segment at every real position, when there is only one."""
        if not self.owners:  # nothing but padding
            return 0
        if len(self.owners) == 1 and len(set(self.owners[0])) == 1:
            return self.owners[0][0]
        return None

    def same_partition(self, other: PositionGroups) -> bool:
        return other is self or (other.bounds == self.bounds and torch.equal(other.order, self.order))


def _identity(t: torch.Tensor) -> tuple:
    """What makes two tensors hold the same values: storage, geometry and in-place version."""
    return (t.data_ptr(), tuple(t.shape), t.stride(), t._version, t.dtype)


class BatchState:
    """What every grafted module shares during one forward call of the recipient.

    ``padding``: ``BoolTensor[batch, pos]``, True where the attention mask is 0. No real position
    attends to a padded one, so grafted modules leave padded rows uncomputed (zero), as the
    literal definition does.
    """

    def __init__(self, shape: tuple[int, int], padding: torch.Tensor | None = None):
        self.shape = shape  # (batch, pos)
        self.padding = padding.reshape(-1) if padding is not None and bool(padding.any()) else None  # [batch*pos]
        self._groups: dict[bytes, PositionGroups] = {}
        # The same owner maps (by identity: segments claimed by the same rules share theirs) are
        # grouped once; the maps are kept with their groups so that no identity is reused.
        self._seen: dict[tuple[int, ...], tuple[Sequence[torch.Tensor], PositionGroups | None]] = {}
        # The last gather: (identity of its input, the input, its groups, the rows of each group).
        # The input is held so that its storage cannot be reused under the same identity.
        self._gathered: tuple[tuple, torch.Tensor, PositionGroups, list[torch.Tensor]] | None = None

    def groups(self, owner_maps: Sequence[torch.Tensor]) -> PositionGroups | None:
        """Group positions by their owner per segment (``owner_maps``: ``[batch, pos]`` each); None
        when the recipient owns every segment everywhere (nothing grafted)."""
        seen = tuple(id(o) for o in owner_maps)
        if seen not in self._seen:
            grafted = any(bool(o.any()) for o in owner_maps)
            self._seen[seen] = (owner_maps, self._grouped(owner_maps) if grafted else None)
        return self._seen[seen][1]

    def _grouped(self, owner_maps: Sequence[torch.Tensor]) -> PositionGroups:
        n_owners = 1 + max(int(o.max()) for o in owner_maps)
        code = torch.zeros_like(owner_maps[0].reshape(-1))  # [batch*pos]: one number per owner combination
        for o in owner_maps:
            code = code * n_owners + o.reshape(-1)
        if self.padding is not None:
            code[self.padding] = -1  # padded positions sort first, then are set aside
        key = code.cpu().numpy().tobytes() + bytes([n_owners, len(owner_maps)])
        if key in self._groups:  # many modules share the same ownership: group once per batch
            return self._groups[key]
        values, counts = torch.unique(code, return_counts=True)  # sorted codes
        order = torch.argsort(code, stable=True)  # positions sorted by code = grouped
        skipped = None
        if int(values[0]) == -1:
            skipped, order = order[: int(counts[0])], order[int(counts[0]) :]
            values, counts = values[1:], counts[1:]
        owners = []
        for v in values.tolist():
            digits = []
            for _ in owner_maps:
                digits.append(v % n_owners)
                v //= n_owners
            owners.append(tuple(reversed(digits)))
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        groups = self._groups[key] = PositionGroups(owners, bounds, order, skipped)
        return groups

    def batched(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """``x`` as ``[batch, pos, ...]``, broadcasting a shared ``[1, pos, ...]`` input."""
        batch, seq = self.shape
        if tuple(x.shape[:2]) == (batch, seq):
            return x
        if x.dim() >= 2 and x.shape[0] == 1 and x.shape[1] == seq:  # e.g. shared position ids
            return x.expand(batch, *x.shape[1:])
        raise InterventionError(
            f"cannot graft {path}: its input has shape {list(x.shape)}, expected [batch={batch}, pos={seq}, ...]"
        )

    def grouped_rows(self, x: torch.Tensor, groups: PositionGroups) -> list[torch.Tensor]:
        """``x``'s rows of each group (``[n_g, ...]``); modules reading the same tensor with the
        same grouping (q, k and v) share one gather."""
        kept = self._gathered
        identity = _identity(x)
        if kept is not None and kept[0] == identity and groups.same_partition(kept[2]):
            return kept[3]
        batch, seq = self.shape
        flat = x.reshape(batch * seq, *x.shape[2:]).index_select(0, groups.order)  # [n_real, ...] grouped
        parts = [flat[groups.span(g)] for g in range(len(groups.owners))]
        self._gathered = (identity, x, groups, parts)
        return parts

    def scatter(self, parts: Sequence[torch.Tensor], groups: PositionGroups) -> torch.Tensor:
        """Copy each group's rows back to their places: ``[batch, pos, ...]``."""
        rows = list(parts)
        if groups.skipped is not None:  # the row every padded position reads
            rows.append(parts[0].new_zeros((1, *parts[0].shape[1:])))
        return self.read_back(torch.cat(rows) if len(rows) > 1 else rows[0], groups)

    def grouped_buffer(self, like: torch.Tensor, groups: PositionGroups, width: int) -> torch.Tensor:
        """An output for every group's rows end to end, ``[n_real (+1), width]``, for modules
        that write their groups' rows in place; the extra row (zero) is what padded positions read."""
        n = len(groups.order)
        out = like.new_empty((n + (groups.skipped is not None), width))
        if groups.skipped is not None:
            out[n:].zero_()
        return out

    def read_back(self, grouped: torch.Tensor, groups: PositionGroups) -> torch.Tensor:
        """``grouped`` (every group's rows end to end, then the padded positions' zero row) in
        position order: ``[batch, pos, ...]``.

        One gather through ``groups.inverse``; linear modules write their products straight
        into ``grouped``, so their output rows are copied only this once."""
        batch, seq = self.shape
        return grouped.index_select(0, groups.inverse).view(batch, seq, *grouped.shape[1:])


class _Replacement:
    """A callable installed as ``module.forward`` for the life of a grafting context."""

    def __init__(self, module: nn.Module, path: str):
        self.module = module
        self.path = path
        self.original_forward = module.forward  # bound; may be an accelerate wrapper
        self.had_instance_forward = "forward" in module.__dict__

    def install(self) -> None:
        self.module.forward = self  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self.had_instance_forward:
            self.module.forward = self.original_forward  # type: ignore[method-assign]
        else:
            del self.module.forward


class GraftedModule(_Replacement):
    """The replacement forward of one module: per-owner gather → compute → scatter.

    ``patch``: compute the whole output with the owners of most positions and patch the other
    owners' rows in (for norms and embeddings, which cost less to compute than to copy).
    """

    def __init__(
        self,
        module: nn.Module,
        path: str,
        segments: Sequence[Rows | None],
        donor_params: Sequence[Mapping[str, torch.Tensor]],
        patch: bool = False,
    ):
        super().__init__(module, path)
        self.patch = patch
        self.twins = [twin(module, p) for p in donor_params]  # index i-1 ↔ owner i
        own = module_params(module)
        self.params = [own, *donor_params]  # owner → its tensors
        device = next(iter(own.values())).device
        self.row_index = [rows_index(rows, device) for rows in segments]  # output rows of each segment
        self.state: BatchState | None = None
        self.groups: PositionGroups | None = None
        self.forced: tuple[int, ...] | None = None  # owners per segment while a grafted block runs it
        # A plain nn.Linear is computed here as its own forward would (addmm/mm), each group's
        # product written straight into its rows of one output (outside autograd: out= has none).
        self.linear = type(module) is nn.Linear and not self.had_instance_forward
        in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
        self.wide_linear = self.linear and len(segments) == 1 and bool(in_f and out_f and out_f >= WIDE_OUTPUT * in_f)

    def set_plan(self, plan: ModulePlan | None, state: BatchState | None) -> None:
        """This batch's plan for the module; None when nothing is grafted."""
        self.state = state
        self.groups = None if state is None or plan is None else state.groups(plan.owners)

    def has_hooks(self) -> bool:
        return bool(self.module._forward_hooks or self.module._forward_pre_hooks)

    def compute(self, owner: int, x: torch.Tensor) -> torch.Tensor:
        if owner == 0:
            return self.original_forward(x)
        return type(self.module).forward(self.twins[owner - 1], x)

    def compute_group(self, owners: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        """Rows ``x`` whose segments are owned by ``owners``: each segment from its owner's weights."""
        distinct = list(dict.fromkeys(owners))
        y = self.compute(distinct[0], x)
        for other in distinct[1:]:
            y_other = self.compute(other, x)
            for k, owner in enumerate(owners):
                if owner == other:
                    rows = self.row_index[k]
                    y[..., rows] = y_other[..., rows] if rows is not None else y_other
        return y

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.forced is not None:  # inside a grafted block: x holds one group's rows
            return self.compute_group(self.forced, x)
        if self.groups is None:
            return self.original_forward(x, *args, **kwargs)
        if args or kwargs:
            raise InterventionError(f"cannot graft {self.path}: its forward takes more than one input")
        state, groups = self.state, self.groups
        assert state is not None
        x = state.batched(x, self.path)
        single = groups.single_owner
        if single is not None:
            return self.compute(single, x)
        if self.patch:
            return self._patched(x, groups, state)
        parts = state.grouped_rows(x, groups)
        if self.linear and x.dim() == 3 and not torch.is_grad_enabled():
            return self._wide_linear(parts, groups, state) if self.wide_linear else self._linear(parts, groups, state)
        ys = [self.compute_group(owners, xi) for owners, xi in zip(groups.owners, parts)]
        return state.scatter(ys, groups)

    def _patched(self, x: torch.Tensor, groups: PositionGroups, state: BatchState) -> torch.Tensor:
        """The whole output computed with the owners of most positions, the other groups' rows
        computed apart and copied in: ``[batch, pos, ...]``."""
        sizes = [groups.bounds[g + 1] - groups.bounds[g] for g in range(len(groups.owners))]
        main = max(range(len(sizes)), key=sizes.__getitem__)
        y = self.compute_group(groups.owners[main], x)  # [batch, pos, ...]
        if not y.is_contiguous() or y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            y = y.clone(memory_format=torch.contiguous_format)  # patched in place: never the input's memory
        batch, seq = state.shape
        flat_x, flat_y = x.reshape(batch * seq, *x.shape[2:]), y.view(batch * seq, *y.shape[2:])
        for g, owners in enumerate(groups.owners):
            if g != main:
                rows = groups.order[groups.span(g)]  # [n_g]
                flat_y.index_copy_(0, rows, self.compute_group(owners, flat_x.index_select(0, rows)))
        return y

    def _product(self, owner: int, x: torch.Tensor, out: torch.Tensor, cols: slice = slice(None)) -> None:
        """``out = x @ W[cols].T + b[cols]`` with ``owner``'s weights (what nn.Linear's forward computes)."""
        weight, bias = self.params[owner]["weight"][cols], self.params[owner].get("bias")
        if bias is None:
            torch.mm(x, weight.t(), out=out)
        else:
            torch.addmm(bias[cols], x, weight.t(), out=out)

    def _linear(self, parts: list[torch.Tensor], groups: PositionGroups, state: BatchState) -> torch.Tensor:
        """Each group's product written into its rows of one grouped output, then read back in
        position order (no copy of the groups' outputs in between)."""
        grouped = state.grouped_buffer(parts[0], groups, self.module.out_features)  # [n_real (+1), out]
        for g, (owners, xi) in enumerate(zip(groups.owners, parts)):
            dst = grouped[groups.span(g)]
            if len(set(owners)) == 1:
                self._product(owners[0], xi, dst)
            else:  # a fused projection whose parts have different owners here
                dst.copy_(self.compute_group(owners, xi))
        return state.read_back(grouped, groups)

    def _wide_linear(self, parts: list[torch.Tensor], groups: PositionGroups, state: BatchState) -> torch.Tensor:
        """A wide output (the 49k-wide unembedding) in chunks of columns: each group's product
        (``parts[g]``: its input rows, ``[n_g, in]``) is written into a small buffer, which is
        copied to the output rows while still in cache.
        Whole-width group outputs would be written, paged in and read back once more; computing
        every row with the recipient and overwriting the donors' rows would redo their share."""
        batch, seq = state.shape
        n, out_f = len(groups.order), self.module.out_features  # real rows, output width
        out = parts[0].new_empty(batch * seq, out_f)  # [batch*pos, out]
        cols = max(MIN_CHUNK_COLUMNS, CHUNK_BYTES // (max(n, 1) * out.element_size()))
        buffer = out.new_empty(n * min(cols, out_f))
        for c0 in range(0, out_f, cols):
            c1 = min(out_f, c0 + cols)
            grouped = buffer[: n * (c1 - c0)].view(n, c1 - c0)  # [n_real, chunk] in group order
            for g, (owner,) in enumerate(groups.owners):
                self._product(owner, parts[g], grouped[groups.span(g)], slice(c0, c1))
            out[:, c0:c1].index_copy_(0, groups.order, grouped)
        if groups.skipped is not None:
            out.index_fill_(0, groups.skipped, 0)
        return out.view(batch, seq, out_f)


class GraftedBlock(_Replacement):
    """A position-wise block (the MLP) grafted as a whole: one gather and one scatter for all
    its grafted modules, which compute each group of rows with that group's owners.

    Falls back to per-module grafting when a module inside carries hooks (a hook must see the
    whole ``[batch, pos, ...]`` tensor).
    """

    def __init__(self, module: nn.Module, path: str, members: Sequence[GraftedModule]):
        super().__init__(module, path)
        self.members = list(members)
        self.state: BatchState | None = None
        self.groups: PositionGroups | None = None
        self._slices: list[tuple[GraftedModule, slice]] = []

    def set_plan(self, plans: Mapping[str, ModulePlan], state: BatchState | None) -> None:
        """Group positions by the owners of every segment of every grafted member."""
        self.state, self.groups, self._slices = state, None, []
        if state is None:
            return
        maps: list[torch.Tensor] = []
        for m in self.members:
            if m.groups is not None:
                own = plans[m.path].owners
                self._slices.append((m, slice(len(maps), len(maps) + len(own))))
                maps.extend(own)
        if maps:  # some member is grafted, so the groups are not None
            self.groups = state.groups(maps)

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.groups is None or args or kwargs or any(m.has_hooks() for m in self.members):
            return self.original_forward(x, *args, **kwargs)
        state, groups = self.state, self.groups
        assert state is not None
        x = state.batched(x, self.path)
        try:
            if len(groups.owners) <= 1:  # one owner combination everywhere: no gather needed
                return self._run(groups.owners[0], x) if groups.owners else self.original_forward(x)
            parts = state.grouped_rows(x, groups)
            ys = [self._run(owners, xi) for owners, xi in zip(groups.owners, parts)]
        finally:
            for member, _ in self._slices:
                member.forced = None
        return state.scatter(ys, groups)

    def _run(self, owners: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        for member, sl in self._slices:
            member.forced = owners[sl]
        return self.original_forward(x)
