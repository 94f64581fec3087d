"""Graft rules and their compilation into per-module ownership maps.

A `Graft` says: donor ``donor`` computes ``components`` in ``layers`` at ``positions``.
Compiling a list of rules for one batch gives, for every module touched, its *segments* (the
whole output, or the rows of one part of a fused projection) and for each segment an owner map
``LongTensor[batch, pos]``: 0 = the recipient, ``i`` = the ``i``-th donor. Rules apply in
order, so a later rule wins where rules overlap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from graftlens.errors import InterventionError
from graftlens.models.names import MODEL_COMPONENTS, expand_components, select_layers
from graftlens.positions import PositionsLike, Spans, resolve_positions

if TYPE_CHECKING:  # rules are parsed when recipes are read, without torch
    import torch

    from graftlens.models.adapters import ArchitectureAdapter, Rows

LayersLike = int | str | Sequence[int] | range | None


class GraftRuleError(InterventionError):
    """A graft rule names an unknown donor or is otherwise malformed."""


@dataclass(frozen=True, eq=False)
class Graft:
    """Donor ``donor`` computes ``components`` of ``layers`` at ``positions``.

    Args:
        donor: the donor's name, a key of the ``donors`` mapping.
        components: canonical names or groups (``"q"``, ``"attn"``, ``"o+mlp"``, ``"all"``).
        layers: ints, lists, ranges or named groups (``"half2"``, ``"quarter4"``, ``"all"``);
            ignored for model-wide components (embed, lm_head, ln_final).
        positions: None (every position), a ``BoolTensor[batch, pos]``, or a selector in prompt
            coordinates (``"FE"``, ``"LT"``, ``"(FE+LT)^C"``, index lists).

    Examples:
        >>> from graftlens import Graft
        >>> Graft("ft", "o+mlp", "quarter4", "LT")
        Graft(donor='ft', components='o+mlp', layers='quarter4', positions='LT')
        >>> Graft("task", components=["q", "k", "v"], layers=range(15, 30), positions="FE")  # doctest: +ELLIPSIS
        Graft(donor='task', components=['q', 'k', 'v'], layers=range(15, 30), positions='FE')
    """

    donor: str
    components: str | Sequence[str] = "all"
    layers: LayersLike = "all"
    positions: PositionsLike = None


@dataclass(frozen=True)
class SiteChoice:
    """One (module, rows) site with the layer-independent parts of its rule resolved."""

    path: str
    rows: Rows | None


def module_sites(adapter: ArchitectureAdapter) -> dict[str, list[Rows | None]]:
    """Every module the adapter knows → the row sets of its components (a full partition for
    fused projections, ``[None]`` for plain modules)."""
    out: dict[str, list[Rows | None]] = {}
    for layer in range(adapter.n_layers):
        for comp in adapter.layer_components:
            for site in adapter.sites(comp, layer):
                out.setdefault(site.path, [])
                if site.rows not in out[site.path]:
                    out[site.path].append(site.rows)
    for comp in adapter.model_components:
        for site in adapter.sites(comp):
            out.setdefault(site.path, [None])
    return out


def rule_sites(adapter: ArchitectureAdapter, rule: Graft) -> list[SiteChoice]:
    """The sites a rule touches (validated against the model)."""
    available = adapter.layer_components + adapter.model_components
    components = expand_components(rule.components, available=available)
    per_layer = [c for c in components if c not in MODEL_COMPONENTS]
    layers = select_layers(rule.layers, adapter.n_layers) if per_layer else ()
    sites: list[SiteChoice] = []
    for comp in components:
        if comp in MODEL_COMPONENTS:
            sites.extend(SiteChoice(s.path, s.rows) for s in adapter.sites(comp))
        else:
            for layer in layers:
                sites.extend(SiteChoice(s.path, s.rows) for s in adapter.sites(comp, layer))
    return sites


@dataclass
class ModulePlan:
    """Who computes each segment of one module's output, per position (segments claimed by the
    same rules share one owner map: treat the maps as read-only)."""

    path: str
    segments: list[Rows | None]
    owners: list[torch.Tensor] = field(default_factory=list)  # per segment: LongTensor[batch, pos]

    def last(self, n: int) -> ModulePlan:
        """The plan of the last ``n`` positions only (a KV-cache continuation computes just those)."""
        return ModulePlan(self.path, self.segments, [o[:, -n:] for o in self.owners])


def check_donor_names(rules: Sequence[Graft], donor_names: Sequence[str]) -> None:
    """Every rule must name one of the donors."""
    for rule in rules:
        if rule.donor not in donor_names:
            raise GraftRuleError(f"graft rule names donor {rule.donor!r}; the donors are: {', '.join(donor_names) or 'none'}")


def compile_rules(
    adapter: ArchitectureAdapter,
    rules: Sequence[Graft],
    donor_names: Sequence[str],
    attention_mask: torch.Tensor,
    spans: Sequence[Spans] | None = None,
    all_sites: Mapping[str, list[Rows | None]] | None = None,
) -> dict[str, ModulePlan]:
    """Owner maps of every module some rule touches, for this batch.

    The prompt's columns are resolved on the prompt. Tokens after it (the examples' ``LT`` spans
    say where each prompt ends: generated tokens, a teacher-forced target) are resolved one at a
    time, each on the sequence up to and including it — what a token-by-token loop that resolves
    the rules at every step would graft, so ``LT`` claims every new token and ``FE`` none."""
    all_sites = all_sites if all_sites is not None else module_sites(adapter)
    check_donor_names(rules, donor_names)
    new_index = _new_token_index(attention_mask, spans)  # [batch, pos]: k at the k-th new token, else -1
    if new_index is None:
        return _compile(adapter, rules, donor_names, attention_mask, spans, all_sites)
    plans = _compile(adapter, rules, donor_names, attention_mask * (new_index < 0), spans, all_sites)
    for k in range(int(new_index.max()) + 1):
        upto = attention_mask * (new_index <= k)  # the prompt and new tokens 0..k
        at = new_index == k  # [batch, pos]
        done: set[int] = set()  # owner maps are shared between segments: update each once
        for path, plan in _compile(adapter, rules, donor_names, upto, spans, all_sites).items():
            for owners, owners_k in zip(plans[path].owners, plan.owners):
                if id(owners) not in done:
                    done.add(id(owners))
                    owners[at] = owners_k[at]
    return plans


def _new_token_index(attention_mask: torch.Tensor, spans: Sequence[Spans] | None) -> torch.Tensor | None:
    """``LongTensor[batch, pos]``: ``k`` at the ``k``-th real token after each row's prompt (whose
    end is its ``LT`` span's), -1 elsewhere; None when no row has tokens after its prompt."""
    import torch

    if spans is None or len(spans) != attention_mask.shape[0] or not all("LT" in s for s in spans):
        return None
    real = attention_mask.bool()
    coord = real.long().cumsum(-1) - 1  # [batch, pos]: prompt coordinates of the real tokens
    prompt_len = torch.tensor([int(s["LT"][1]) for s in spans], device=attention_mask.device)[:, None]
    after = real & (coord >= prompt_len)
    if not bool(after.any()):
        return None
    return torch.where(after, coord - prompt_len, torch.full_like(coord, -1))


def _compile(
    adapter: ArchitectureAdapter,
    rules: Sequence[Graft],
    donor_names: Sequence[str],
    attention_mask: torch.Tensor,
    spans: Sequence[Spans] | None,
    all_sites: Mapping[str, list[Rows | None]],
) -> dict[str, ModulePlan]:
    import torch

    batch, seq = attention_mask.shape
    # Which rules claim each segment of each module, in order: a segment's owner map follows
    # from that list alone, so segments with the same list share one map (most share one of a
    # few). The engine groups positions once per distinct map, not once per module.
    claims: dict[str, list[list[int]]] = {}
    for r, rule in enumerate(rules):
        for site in rule_sites(adapter, rule):
            segments = all_sites[site.path]
            lists = claims.setdefault(site.path, [[] for _ in segments])
            for k in range(len(segments)) if site.rows is None else [segments.index(site.rows)]:
                if not lists[k] or lists[k][-1] != r:  # a rule claims a segment once
                    lists[k].append(r)
    masks: dict[int, torch.Tensor] = {}  # rule index → its positions, [batch, pos]
    maps: dict[tuple[int, ...], torch.Tensor] = {}  # rules that claim a segment → its owner map
    plans: dict[str, ModulePlan] = {}
    for path, lists in claims.items():
        owners = []
        for rule_list in map(tuple, lists):
            if rule_list not in maps:
                owner = torch.zeros(batch, seq, dtype=torch.long, device=attention_mask.device)
                for r in rule_list:
                    if r not in masks:
                        masks[r] = resolve_positions(rules[r].positions, attention_mask, spans)
                    owner[masks[r]] = list(donor_names).index(rules[r].donor) + 1
                maps[rule_list] = owner
            owners.append(maps[rule_list])
        plans[path] = ModulePlan(path, list(all_sites[path]), owners)
    return plans


def touched_modules(adapter: ArchitectureAdapter, rules: Sequence[Graft]) -> list[str]:
    """Module paths any rule may graft (independent of positions)."""
    paths: list[str] = []
    for rule in rules:
        for site in rule_sites(adapter, rule):
            if site.path not in paths:
                paths.append(site.path)
    return paths
