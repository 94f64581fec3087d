"""Grafting attention heads: a head's rows of q, k and v and its columns of o.

A `HeadGraft` names query heads ``(layer, head)`` of the recipient. At the positions it
claims, each named head computes with the donor's weights:

- its rows of ``q`` (the ``d_head`` output features of that head, bias included);
- its rows of ``k`` and ``v``: those of the KV head it reads. Under grouped-query attention a KV
  head serves ``n_heads / n_kv_heads`` query heads, and grafting any of them grafts that KV head
  whole, so the query heads sharing it read the donor's keys and values too (a KV head has one
  owner; there is no half-grafted key);
- its columns of ``o`` (the ``d_head`` input features that carry the head's output); ``o``'s bias
  is not a head's and stays the recipient's, as do the q/k norms of OLMo-2 (norms over every head).

Fused projections (GPT-2's ``c_attn``, GPT-NeoX's per-head interleaved ``query_key_value``, Phi-3's
``qkv_proj``) are handled through the adapter's rows of each part. The engine grafts a head graft
as a rule of the whole projection from a *spliced* donor: the recipient's weights with the named
heads' rows (columns, for ``o``) copied from the donor. What the engine computes is then, row for
row, the literal definition above (tested against the literal reference extended to heads).

Head grafts may share a module: a circuit's groups each graft their heads at their own positions,
and two groups often have heads in one layer. Where they share a module, every combination of
them gets a rule at the positions all of its members claim, from a donor spliced with all of
their heads, so that at each position the module computes with exactly the heads claimed there
(`expand_head_grafts`). A head graft and a component graft may not share a module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.graft.donors import DonorSource, DonorWeights, donor_weights, module_params
from graftlens.graft.rules import Graft
from graftlens.models.adapters import Rows, output_dim, rows_index
from graftlens.models.names import Head

if TYPE_CHECKING:
    from graftlens.models.loading import LoadedModel
    from graftlens.positions import PositionsLike

HEAD_PARTS = ("q", "k", "v", "o")


class HeadGraftError(InterventionError):
    """A head graft names a head the model lacks, an unknown part, or shares a module with another rule."""


@dataclass(frozen=True, eq=False)
class HeadGraft:
    """Donor ``donor`` computes query heads ``heads`` (``(layer, head)`` pairs) at ``positions``:
    their rows of ``q``, ``k`` and ``v`` (k/v: the KV head each reads) and their columns of ``o``
    (``parts`` chooses among the four).

    Args:
        donor: the donor's name, a key of the ``donors`` mapping.
        heads: query heads, ``(layer, head)`` pairs.
        positions: None (every position) or a selector in prompt coordinates (``"FE"``, ``"LT"``,
            ``"(FE+LT)^C"``, index lists).
        parts: which of ``q``, ``k``, ``v`` (the KV head each reads) and ``o`` are grafted.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens import HeadGraft
        >>> from graftlens.models import tiny_model
        >>> recipient, ft = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> rules = [HeadGraft("ft", [(3, 0), (3, 2)], "LT")]
        >>> graftlens.grafted_forward(recipient, {"ft": ft}, rules, ids, last_only=True).shape
        torch.Size([1, 1, 96])
    """

    donor: str
    heads: Sequence[Head]
    positions: PositionsLike = None
    parts: str | Sequence[str] = HEAD_PARTS

    def part_list(self) -> list[str]:
        parts = self.parts.split("+") if isinstance(self.parts, str) else list(self.parts)
        bad = [p for p in parts if p not in HEAD_PARTS]
        if bad or not parts:
            raise HeadGraftError(f"head graft: parts {bad or parts} are not parts of a head (choose from q, k, v, o)")
        return parts


@dataclass(frozen=True)
class HeadSite:
    """Where a head's weights sit in one module: output ``rows`` of q/k/v (weight and bias), or
    input ``cols`` of o (weight only)."""

    path: str
    rows: Rows | None = None
    cols: Rows | None = None


def _intervals(index: torch.Tensor) -> Rows:
    """Sorted indices as ``((start, stop), ...)`` runs."""
    out: list[list[int]] = []
    for i in sorted(set(index.tolist())):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return tuple((a, b) for a, b in out)


def _is_projection(model: nn.Module, path: str) -> bool:
    weight = getattr(model.get_submodule(path), "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2


def head_sites(loaded: LoadedModel, head: Head, parts: Iterable[str]) -> list[HeadSite]:
    """The sites of one query head's ``parts`` in ``loaded``, checked against its shape."""
    a = loaded.adapter
    layer, h = head
    if not (0 <= layer < a.n_layers and 0 <= h < a.n_heads):
        raise HeadGraftError(
            f"head {layer}.{h} is not a head of the model (layers 0..{a.n_layers - 1}, heads 0..{a.n_heads - 1})"
        )
    d = a.dims.d_head
    kv = h // (a.n_heads // a.n_kv_heads)
    out = []
    for part in parts:
        if part == "o":
            (site,) = [s for s in a.sites("o", layer) if _is_projection(loaded.model, s.path)]
            out.append(HeadSite(site.path, cols=((h * d, (h + 1) * d),)))
            continue
        first = (h if part == "q" else kv) * d
        for site in a.sites(part, layer):
            if not _is_projection(loaded.model, site.path):
                continue  # a norm over every head's features (OLMo-2's q_norm): not a head's
            features = torch.arange(first, first + d)
            index = rows_index(site.rows)
            out.append(HeadSite(site.path, rows=_intervals(features if index is None else index[features])))
    return out


class SplicedDonor(DonorSource):
    """The recipient's weights with some heads' rows (columns, for o) taken from donors: what a
    head graft's rule computes its modules with. ``sources`` are ``(donor, sites)`` pairs, spliced
    in order (a later one wins on a head both name). Modules it does not splice lend the
    recipient's own tensors (a rule of this donor claims only spliced modules and norms left as
    they are)."""

    def __init__(self, sources: Sequence[tuple[Any, Sequence[HeadSite]]]):
        self.sources = [(donor, list(sites)) for donor, sites in sources]

    def weights(self, name: str, recipient: nn.Module, module_paths: Iterable[str]) -> DonorWeights:
        paths = sorted(set(module_paths))
        read = []  # per source: its donor's tensors of the modules it splices
        for donor, sites in self.sources:
            spliced = sorted({s.path for s in sites} & set(paths))
            read.append((donor_weights(name, donor, recipient, spliced) if spliced else None, sites))
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        for path in paths:
            module = recipient.get_submodule(path)
            own = {k: v.detach() for k, v in module_params(module).items()}
            if not any(s.path == path for _, sites in read for s in sites):
                tensors[path] = own
                continue
            params = {k: v.clone() for k, v in own.items()}
            for source, sites in read:
                for site in (s for s in sites if s.path == path):
                    for pname, t in params.items():
                        theirs = source.tensors[path][pname]
                        out_dim = output_dim(module, pname)
                        if site.rows is not None:
                            for a, b in site.rows:
                                t.narrow(out_dim, a, b - a).copy_(theirs.narrow(out_dim, a, b - a))
                        elif site.cols is not None and pname == "weight":
                            for a, b in site.cols:
                                t.narrow(1 - out_dim, a, b - a).copy_(theirs.narrow(1 - out_dim, a, b - a))
            tensors[path] = params
        described = " + ".join(dict.fromkeys(w.source for w, _ in read if w is not None))
        return DonorWeights(name, f"{described} (heads spliced)", tensors, owned=True)


@dataclass
class _HeadSet:
    """Head grafts merged: one donor, positions and parts; their heads and the sites of those."""

    donor: str
    positions: Any
    parts: list[str]
    heads: list[Head]
    sites: list[HeadSite]

    def layers(self, part: str) -> set[int]:
        return {layer for layer, _ in self.heads} if part in self.parts else set()


MAX_OVERLAPPING = 6  # head sets sharing one module: a rule per combination of them


def expand_head_grafts(
    recipient: LoadedModel, donors: Mapping[str, Any], rules: Sequence[Any], tag: str = ""
) -> tuple[list[Graft], dict[str, Any]]:
    """``rules`` with every `HeadGraft` replaced by rules of its modules from spliced
    donors, and the donors with those spliced donors added.

    Head grafts of one donor, positions and parts are merged into one *head set*. Head sets may
    share modules (a layer with heads of two groups, each at its own positions): every
    combination of sets that share a part of a layer gets one more rule, at the positions all of
    them claim, from a donor spliced with all of their heads (later sets winning a head two name),
    and these rules come after the sets' own, smallest combination first. At every position a
    module then computes with exactly the heads of the sets that claim it. A head graft may not
    share a module with a component rule (a `HeadGraftError` naming it)."""
    if not any(isinstance(r, HeadGraft) for r in rules):
        return list(rules), dict(donors)
    from graftlens.graft.rules import touched_modules

    sets, order = _merged_head_sets(rules, donors)
    out_donors = dict(donors)
    out: list[Graft] = []
    component_modules: dict[str, str] = {}
    for item in order:
        if isinstance(item, int):
            hs = sets[item]
            if not hs.heads:
                raise HeadGraftError(f"head graft of donor {hs.donor!r} names no head")
            hs.sites = [s for head in hs.heads for s in head_sites(recipient, head, hs.parts)]
            name = f"{hs.donor} heads#{len(out)}{tag}"
            out_donors[name] = SplicedDonor([(donors[hs.donor], hs.sites)])
            out.append(Graft(name, hs.parts, sorted({layer for layer, _ in hs.heads}), hs.positions))
        else:
            out.append(item)
            for path in touched_modules(recipient.adapter, [item]):
                component_modules.setdefault(path, f"rule of donor {item.donor!r}")
    head_sets = [sets[k] for k in order if isinstance(k, int)]
    for hs in head_sets:
        rule = Graft("", hs.parts, sorted({layer for layer, _ in hs.heads}), hs.positions)
        for path in touched_modules(recipient.adapter, [rule]):
            if path in component_modules:
                raise HeadGraftError(
                    f"module {path} is grafted by two rules ({component_modules[path]} and heads of donor "
                    f"{hs.donor!r} at {_positions_text(hs.positions)}): a head graft shares no module with a component rule"
                )
    for combo, where in _combinations(head_sets):
        members = [head_sets[i] for i in combo]
        positions = _all_of([m.positions for m in members])
        name = f"{'+'.join(dict.fromkeys(m.donor for m in members))} heads#{'&'.join(map(str, combo))}{tag}"
        out_donors[name] = SplicedDonor([(donors[m.donor], m.sites) for m in members])
        for part in HEAD_PARTS:
            layers = sorted(layer for p, layer in where if p == part)
            if layers:
                out.append(Graft(name, [part], layers, positions))
    return out, out_donors


def _merged_head_sets(rules: Sequence[Any], donors: Mapping[str, Any]) -> tuple[dict[int, _HeadSet], list[Any]]:
    """Head grafts merged into head sets, and the order of component rules and head sets (by
    index). A head graft joins the latest set of its donor, positions and parts unless a set made
    after that one names one of its heads in a common part: then rule order decides who computes
    the head (the later rule wins), so it starts a set of its own, after the other."""
    sets: dict[int, _HeadSet] = {}
    latest: dict[tuple, int] = {}  # (donor, positions, parts) -> index of the latest set of that key
    order: list[Any] = []  # component rules and head-set indices, in the rules' order
    for r in rules:
        if not isinstance(r, HeadGraft):
            order.append(r)
            continue
        if r.donor not in donors:
            raise HeadGraftError(f"head graft names donor {r.donor!r}; the donors are: {', '.join(donors) or 'none'}")
        where = r.positions if r.positions is None or isinstance(r.positions, str) else id(r.positions)
        key = (r.donor, where, "+".join(r.part_list()))
        parts = set(r.part_list())
        at = latest.get(key)
        overtaken = at is not None and any(
            parts & set(later.parts) and set(r.heads) & set(later.heads) for i, later in sets.items() if i > at
        )
        if at is None or overtaken:
            at = latest[key] = len(sets)
            sets[at] = _HeadSet(r.donor, r.positions, r.part_list(), [], [])
            order.append(at)
        sets[at].heads.extend(h for h in r.heads if h not in sets[at].heads)
    return sets, order


def _combinations(head_sets: Sequence[_HeadSet]) -> list[tuple[tuple[int, ...], list[tuple[str, int]]]]:
    """Every combination (indices, smallest first) of two or more head sets that all graft some
    part of some layer, with those ``(part, layer)`` pairs."""

    sharing: dict[tuple[str, int], list[int]] = {}
    for i, hs in enumerate(head_sets):
        for part in hs.parts:
            for layer in hs.layers(part):
                sharing.setdefault((part, layer), []).append(i)
    found: dict[tuple[int, ...], list[tuple[str, int]]] = {}
    for where, members in sharing.items():
        if len(members) > MAX_OVERLAPPING:
            raise HeadGraftError(
                f"{len(members)} head grafts at different positions or donors share {where[0]} of layer {where[1]} "
                f"(at most {MAX_OVERLAPPING}): merge those of one donor and positions"
            )
        for size in range(2, len(members) + 1):
            for combo in combinations(members, size):
                found.setdefault(combo, []).append(where)
    return sorted(found.items(), key=lambda item: (len(item[0]), item[0]))


def _all_of(positions: Sequence[Any]) -> Any:
    """The positions every one of ``positions`` claims (``None``: all of them)."""
    from graftlens.positions import Complement, Selector, Union, parse_positions

    given = [p for p in positions if p is not None]
    if not given:
        return None
    if all(isinstance(p, torch.Tensor) for p in given):
        both = given[0]
        for p in given[1:]:
            both = both & p
        return both
    if not all(isinstance(p, str | Selector) for p in given):
        raise HeadGraftError(
            'head grafts that share a module at different positions need selectors ("LT", "query_box") or '
            "BoolTensors for positions, not per-example index lists"
        )
    selectors = [parse_positions(p) if isinstance(p, str) else p for p in given]
    if len(set(map(str, selectors))) == 1:
        return selectors[0]
    return Complement(Union(tuple(Complement(s) for s in selectors)))  # A and B = not (not A or not B)


def _positions_text(positions: Any) -> str:
    if positions is None or isinstance(positions, str):
        return str(positions or "every position")
    return type(positions).__name__
