"""The batched grafting engine: one forward pass, no model copies, no per-token loop.

Every projection, norm and embedding acts on each position independently, so grafting at
positions P is exactly ``out[P] = f(x[P]; θ_donor)``, ``out[~P] = f(x[~P]; θ_base)``. Each
grafted module's ``forward`` is replaced (for the duration of a :class:`Grafter` context) by one
that gathers the rows of each owner, runs the module's own computation with that owner's
parameters on just those rows, and scatters the results back. Attention itself is untouched
(SDPA stays), so later positions read keys/values made with whatever weights applied where
they were computed — the literal token-by-token definition, in one batched pass.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftlens.errors import GraftlensError
from graftlens.graft.donors import DonorWeights, donor_weights
from graftlens.graft.positions import Spans
from graftlens.graft.rules import Graft, ModulePlan, check_donor_names, compile_rules, module_sites, touched_modules
from graftlens.models.adapters import Rows, rows_index
from graftlens.models.loading import LoadedModel, as_loaded

DonorLike = LoadedModel | nn.Module | str | Path
WIDE_OUTPUT = 8  # out_features / in_features above which donor rows overwrite a full recipient product


def _twin(module: nn.Module, params: Mapping[str, torch.Tensor]) -> nn.Module:
    """A shallow copy of ``module`` whose parameters are ``params`` (no data copied)."""
    twin = copy.copy(module)
    twin.__dict__.pop("forward", None)
    # Keep every registered name (a Linear without bias registers bias=None).
    twin._parameters = {name: params.get(name) for name in module._parameters}  # type: ignore[assignment]
    return twin


@dataclass
class PositionGroups:
    """Positions (flat ``batch*pos`` indices) grouped by who owns each segment there.

    ``order`` lists the positions group after group; ``bounds[g]:bounds[g+1]`` is group ``g``'s
    slice of it, ``owners[g]`` its owner per segment.
    """

    owners: list[tuple[int, ...]]
    bounds: list[int]
    order: torch.Tensor  # [batch*pos]


def _position_groups(plan: ModulePlan, cache: dict[bytes, PositionGroups]) -> PositionGroups:
    n_owners = 1 + max(int(o.max()) for o in plan.owners)
    code = torch.zeros_like(plan.owners[0].reshape(-1))  # [batch*pos]: one number per owner combination
    for o in plan.owners:
        code = code * n_owners + o.reshape(-1)
    key = code.cpu().numpy().tobytes() + bytes([n_owners, len(plan.owners)])
    if key in cache:  # many modules share the same ownership: group once per batch
        return cache[key]
    values, counts = torch.unique(code, return_counts=True)  # sorted codes
    order = torch.argsort(code, stable=True)  # positions sorted by code = grouped
    owners = []
    for v in values.tolist():
        digits = []
        for _ in plan.owners:
            digits.append(v % n_owners)
            v //= n_owners
        owners.append(tuple(reversed(digits)))
    bounds = [0, *torch.cumsum(counts, 0).tolist()]
    groups = PositionGroups(owners, bounds, order)
    cache[key] = groups
    return groups


class _GraftedModule:
    """The replacement forward of one module: per-owner gather → compute → scatter."""

    def __init__(
        self,
        module: nn.Module,
        path: str,
        segments: Sequence[Rows | None],
        donor_params: Sequence[Mapping[str, torch.Tensor]],
    ):
        self.module = module
        self.path = path
        self.original_forward = module.forward  # bound; may be an accelerate wrapper
        self.had_instance_forward = "forward" in module.__dict__
        self.twins = [_twin(module, p) for p in donor_params]  # index i-1 ↔ owner i
        self.plan: ModulePlan | None = None
        self.groups: PositionGroups | None = None
        # Output rows of each segment (fixed per module; plans list segments in this order).
        device = next(module.parameters()).device
        self.row_index = [rows_index(rows, device) for rows in segments]
        self.shape: tuple[int, int] = (0, 0)
        self._all_base = tuple(0 for _ in segments)
        in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
        self.wide_output = bool(in_f and out_f and out_f >= WIDE_OUTPUT * in_f)  # measured: benchmarks/bench_graft.py

    def set_plan(self, plan: ModulePlan | None, shape: tuple[int, int], cache: dict[bytes, PositionGroups]) -> None:
        self.plan, self.shape = plan, shape
        if plan is None or plan.is_trivial():
            self.plan, self.groups = None, None
            return
        self.groups = _position_groups(plan, cache)

    def compute(self, owner: int, x: torch.Tensor) -> torch.Tensor:
        if owner == 0:
            return self.original_forward(x)
        return type(self.module).forward(self.twins[owner - 1], x)

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.plan is None:
            return self.original_forward(x, *args, **kwargs)
        if args or kwargs:
            raise GraftlensError(f"cannot graft {self.path}: its forward takes more than one input")
        batch, seq = self.shape
        if tuple(x.shape[:2]) != (batch, seq):
            if x.dim() >= 2 and x.shape[0] == 1 and x.shape[1] == seq:  # e.g. shared position ids
                x = x.expand(batch, *x.shape[1:])
            else:
                raise GraftlensError(
                    f"cannot graft {self.path}: its input has shape {list(x.shape)}, expected [batch={batch}, pos={seq}, ...]"
                )
        groups = self.groups
        assert groups is not None
        if len(groups.owners) == 1 and len(set(groups.owners[0])) == 1:  # one owner everywhere
            return self.compute(groups.owners[0][0], x)
        base_group = groups.owners.index(self._all_base) if self._all_base in groups.owners else None
        if base_group is not None and self.wide_output:
            # A wide output (the unembedding): gathering and copying back every row of it costs
            # more than computing the donors' rows twice. Compute every row with the recipient's
            # weights (as the plain model does), then overwrite the rows donors own.
            out = self.compute(0, x)  # [batch, pos, ...]
            flat_out = out.view(batch * seq, *out.shape[2:])
            flat_x = x.reshape(batch * seq, *x.shape[2:])
            for g, owners in enumerate(groups.owners):
                if g != base_group:
                    idx = groups.order[groups.bounds[g] : groups.bounds[g + 1]]
                    flat_out.index_copy_(0, idx, self._compute_group(owners, flat_x.index_select(0, idx)))
            return out
        # Gather positions group after group, compute each group's slice with its owners'
        # weights, and copy each slice's rows back to their places in the output.
        flat = x.reshape(batch * seq, *x.shape[2:]).index_select(0, groups.order)  # [batch*pos, ...]
        out: torch.Tensor | None = None
        for g, owners in enumerate(groups.owners):
            xi = flat[groups.bounds[g] : groups.bounds[g + 1]]  # [n_g, ...]
            idx = groups.order[groups.bounds[g] : groups.bounds[g + 1]]
            y = self._compute_group(owners, xi)
            if out is None:
                out = y.new_empty((batch * seq, *y.shape[1:]))  # [batch*pos, ...]
            out.index_copy_(0, idx, y)
        assert out is not None
        return out.view(batch, seq, *out.shape[1:])

    def _compute_group(self, owners: tuple[int, ...], xi: torch.Tensor) -> torch.Tensor:
        """Rows ``xi`` whose segments are owned by ``owners``: each segment from its owner's weights."""
        distinct = list(dict.fromkeys(owners))
        y = self.compute(distinct[0], xi)
        for other in distinct[1:]:
            y_other = self.compute(other, xi)
            for k, owner in enumerate(owners):
                if owner == other:
                    rows = self.row_index[k]
                    y[..., rows] = y_other[..., rows] if rows is not None else y_other
        return y

    def install(self) -> None:
        self.module.forward = self  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self.had_instance_forward:
            self.module.forward = self.original_forward  # type: ignore[method-assign]
        else:
            del self.module.forward


class Grafter:
    """Grafts donors into a base model for any number of forward calls (a context manager).

    Each forward call of the base model resolves the rules' positions for its batch from the
    call's ``attention_mask`` and from :attr:`spans` (set it per batch when rules use named
    spans). Full-prompt forward passes only: a call that continues a KV cache is refused.
    """

    def __init__(self, base: LoadedModel | nn.Module, donors: Mapping[str, DonorLike], rules: Sequence[Graft]):
        self.base = as_loaded(base)
        self.rules = list(rules)
        self.donor_names = list(donors)
        self.spans: Sequence[Spans] | None = None
        adapter = self.base.adapter
        self._all_sites = module_sites(adapter)
        check_donor_names(self.rules, self.donor_names)  # before loading any donor tensor
        paths = touched_modules(adapter, self.rules)
        model = self.base.model
        self.donor_weights: dict[str, DonorWeights] = {
            name: donor_weights(name, donor, model, paths) for name, donor in donors.items()
        }
        self._modules = {
            path: _GraftedModule(
                model.get_submodule(path),
                path,
                self._all_sites[path],
                [self.donor_weights[n].params_for(path) for n in self.donor_names],
            )
            for path in paths
        }
        self._hook: Any = None

    @property
    def donor_bytes(self) -> dict[str, int]:
        """Bytes of donor tensors held beyond already-loaded models, per donor."""
        return {name: w.bytes_held for name, w in self.donor_weights.items()}

    def _prepare(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            input_ids = kwargs.get("inputs_embeds")
            if input_ids is None:
                raise GraftlensError("grafting needs input_ids (or inputs_embeds) in the forward call")
            input_ids = input_ids[..., 0]
        past = kwargs.get("past_key_values")
        if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
            raise GraftlensError("grafting runs full-prompt forward passes; continuing a KV cache is not supported")
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(input_ids.shape[:2], dtype=torch.long, device=input_ids.device)
        plans = compile_rules(self.base.adapter, self.rules, self.donor_names, mask, self.spans, self._all_sites)
        shape = (int(mask.shape[0]), int(mask.shape[1]))
        cache: dict[bytes, PositionGroups] = {}
        for path, grafted in self._modules.items():
            grafted.set_plan(plans.get(path), shape, cache)

    def __enter__(self) -> Grafter:
        for grafted in self._modules.values():
            grafted.install()
        self._hook = self.base.model.register_forward_pre_hook(self._prepare, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for grafted in self._modules.values():
            grafted.uninstall()
            grafted.set_plan(None, (0, 0), {})


def grafting(
    base: LoadedModel | nn.Module,
    donors: Mapping[str, DonorLike],
    rules: Sequence[Graft],
    spans: Sequence[Spans] | None = None,
) -> Grafter:
    """``with grafting(base, {"ft": ft}, [Graft("ft", "all", "all", "FE+LT")]) as g: base.model(...)``."""
    grafter = Grafter(base, donors, rules)
    grafter.spans = spans
    return grafter


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0..n-1 over each row's real tokens, so left and right padding give equal results."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def run_logits(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    last_only: bool = False,
) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` (``[batch, 1, vocab]`` with ``last_only``) of one full-prompt
    forward pass, with position ids from the mask; every way graftlens runs a model goes through it."""
    module = model.model if isinstance(model, LoadedModel) else model
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    extra = {"logits_to_keep": 1} if last_only else {}
    with torch.no_grad():
        out = module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_for(attention_mask), **extra)
    return out.logits


def grafted_forward(
    base: LoadedModel | nn.Module,
    donors: Mapping[str, DonorLike],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rules: Sequence[Graft],
    spans: Sequence[Spans] | None = None,
) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` of ``base`` with ``rules`` grafting ``donors`` in, one pass."""
    loaded = as_loaded(base)
    with grafting(loaded, donors, rules, spans):
        return run_logits(loaded, input_ids, attention_mask)
