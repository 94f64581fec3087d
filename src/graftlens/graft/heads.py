"""Grafting attention heads: a head's rows of q, k and v and its columns of o.

A :class:`HeadGraft` names query heads ``(layer, head)`` of the recipient. At the positions it
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

Two head grafts (or a head graft and a component graft) may not share a module unless they
name the same donor and positions (they are then merged): at a position both claim, the
spliced donor of the later one would give the earlier one's heads back to the recipient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.graft.rules import Graft
from graftlens.models.adapters import Rows, rows_index

if TYPE_CHECKING:
    from graftlens.models.loading import LoadedModel
    from graftlens.positions import PositionsLike

Head = tuple[int, int]  # (layer, query head)
HEAD_PARTS = ("q", "k", "v", "o")


class HeadGraftError(InterventionError):
    """A head graft names a head the model lacks, an unknown part, or shares a module with another rule."""


@dataclass(frozen=True, eq=False)
class HeadGraft:
    """Donor ``donor`` computes query heads ``heads`` (``(layer, head)`` pairs) at ``positions``:
    their rows of ``q``, ``k`` and ``v`` (k/v: the KV head each reads) and their columns of ``o``
    (``parts`` chooses among the four).

    Example:
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


class SplicedDonor:
    """The recipient's weights with some heads' rows (columns, for o) taken from ``donor``: what a
    head graft's rule computes its modules with. Modules it does not splice lend the recipient's
    own tensors (a rule of this donor claims only spliced modules and norms left as they are)."""

    def __init__(self, donor: Any, sites: Sequence[HeadSite]):
        self.donor = donor
        self.sites = list(sites)

    def weights(self, name: str, recipient: nn.Module, module_paths: Iterable[str]):
        from graftlens.graft.donors import DonorWeights, donor_weights, module_params

        paths = sorted(set(module_paths))
        spliced = sorted({s.path for s in self.sites} & set(paths))
        source = donor_weights(name, self.donor, recipient, spliced)
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        for path in paths:
            module = recipient.get_submodule(path)
            own = {k: v.detach() for k, v in module_params(module).items()}
            if path not in spliced:
                tensors[path] = own
                continue
            params = {k: v.clone() for k, v in own.items()}
            for site in (s for s in self.sites if s.path == path):
                for pname, t in params.items():
                    theirs = source.tensors[path][pname]
                    out_dim = 1 if type(module).__name__ == "Conv1D" and pname == "weight" else 0
                    if site.rows is not None:
                        for a, b in site.rows:
                            t.narrow(out_dim, a, b - a).copy_(theirs.narrow(out_dim, a, b - a))
                    elif site.cols is not None and pname == "weight":
                        for a, b in site.cols:
                            t.narrow(1 - out_dim, a, b - a).copy_(theirs.narrow(1 - out_dim, a, b - a))
            tensors[path] = params
        return DonorWeights(name, f"{source.source} (heads spliced)", tensors, owned=True)


def expand_head_grafts(
    recipient: LoadedModel, donors: Mapping[str, Any], rules: Sequence[Any], tag: str = ""
) -> tuple[list[Graft], dict[str, Any]]:
    """``rules`` with every :class:`HeadGraft` replaced by a rule of its modules from a spliced
    donor, and the donors with those spliced donors added. Head grafts of one donor and the same
    positions are merged; any other sharing of a module is a :class:`HeadGraftError`."""
    if not any(isinstance(r, HeadGraft) for r in rules):
        return list(rules), dict(donors)
    from graftlens.graft.rules import touched_modules

    out_donors = dict(donors)
    merged: dict[tuple[str, str], list[HeadGraft]] = {}
    order: list[Any] = []
    for r in rules:
        if not isinstance(r, HeadGraft):
            order.append(r)
            continue
        if r.donor not in donors:
            raise HeadGraftError(f"head graft names donor {r.donor!r}; the donors are: {', '.join(donors) or 'none'}")
        where = r.positions if r.positions is None or isinstance(r.positions, str) else id(r.positions)
        key = (r.donor, where, "+".join(r.part_list()))
        if key not in merged:
            merged[key] = []
            order.append(key)
        merged[key].append(r)
    out: list[Graft] = []
    claimed: dict[str, str] = {}  # module path -> which rule claims it
    for i, item in enumerate(order):
        if not isinstance(item, tuple):
            rule, modules = item, touched_modules(recipient.adapter, [item])
        else:
            group = merged[item]
            heads = list(dict.fromkeys(h for g in group for h in g.heads))
            if not heads:
                raise HeadGraftError(f"head graft of donor {group[0].donor!r} names no head")
            parts = group[0].part_list()
            sites = [s for head in heads for s in head_sites(recipient, head, parts)]
            name = f"{group[0].donor} heads#{i}{tag}"
            out_donors[name] = SplicedDonor(donors[group[0].donor], sites)
            rule = Graft(name, parts, sorted({layer for layer, _ in heads}), group[0].positions)
            modules = sorted({s.path for s in sites})
        for path in modules:
            if path in claimed and (isinstance(item, tuple) or claimed[path].startswith("head")):
                raise HeadGraftError(
                    f"module {path} is grafted by two rules ({claimed[path]} and {_describe(item)}): a head graft "
                    "shares no module with another rule unless both name the same donor and positions"
                )
            claimed.setdefault(path, _describe(item))
        out.append(rule)
    return out, out_donors


def _describe(item: Any) -> str:
    if isinstance(item, tuple):
        return f"heads of donor {item[0]!r} at {item[1]}"
    return f"rule of donor {item.donor!r}"
