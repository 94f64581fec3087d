"""The literal definition of dynamic weight grafting: slow, obviously correct, the tests' oracle.

For each example, token by token with a KV cache: before feeding token t, write into a private
copy of the recipient, for every grafted site, the weights of whoever owns that site at t
(recipient or donor; for fused projections, row by row), then run the one token. Later tokens read
the keys/values that earlier tokens computed under their own weights.

This module shares no code with the engine's rule compilation (``rules.compile_rules``), its
position resolution (``Selector.resolve``) or its donor collection (``donors.donor_weights``):
it decides who owns each token by walking the rules in order and evaluating each position
selector at that one token, with the plain set semantics of the selector tree. So a bug in
any of those shows up as a mismatch in the engine-vs-reference tests instead of hiding in both.
It takes from the model layer only the architecture description (which module and rows compute
a component) and the canonical names.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from graftlens.graft.donors import DonorLike
from graftlens.graft.heads import HeadGraft, head_sites
from graftlens.graft.rules import Graft, GraftRuleError
from graftlens.models.adapters import Rows, output_dim
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.names import MODEL_COMPONENTS, expand_components, select_layers
from graftlens.positions import (
    AllPositions,
    Complement,
    Indices,
    LastToken,
    NewTokens,
    PositionError,
    Selector,
    Span,
    Spans,
    Union,
    parse_positions,
)


def selector_claims(selector: Selector, t: int, n: int, spans: Spans | None) -> bool:
    """Does ``selector`` claim token ``t`` (prompt coordinates) of an example of ``n`` tokens?"""
    if isinstance(selector, AllPositions):
        return True
    if isinstance(selector, LastToken):
        return t == n - 1
    if isinstance(selector, Indices):
        for i in selector.indices:
            if not -n <= i < n:
                raise PositionError(f"position {i} out of range for an example with {n} tokens")
        return t in {i % n for i in selector.indices}
    if isinstance(selector, NewTokens):
        if spans is None or "LT" not in spans:
            raise PositionError("the example has no LT span: 'new' needs to know where its prompt ends")
        return t >= spans["LT"][1]
    if isinstance(selector, Span):
        if spans is None or selector.name not in spans:
            raise PositionError(f"the example has no span {selector.name!r}")
        start, stop = spans[selector.name]
        return start <= t < stop
    if isinstance(selector, Union):
        return any(selector_claims(p, t, n, spans) for p in selector.parts)
    if isinstance(selector, Complement):
        return not selector_claims(selector.inner, t, n, spans)
    raise TypeError(f"unknown selector {selector!r}")


def rule_claims(positions, b: int, col: int, t: int, n: int, spans: Spans | None) -> bool:
    """Does a rule's ``positions`` (any accepted form) claim example ``b``'s token ``t``, which
    sits at padded column ``col`` of an example with ``n`` real tokens?

    A token after the prompt (``t`` ≥ the end of the ``LT`` span) is judged as the last token of
    the sequence so far, as a loop generating it would judge it: ``n`` is ``t + 1`` for it."""
    prompt_len = spans["LT"][1] if spans is not None and "LT" in spans else n
    n = t + 1 if t >= prompt_len else min(n, prompt_len)
    if positions is None:
        return True
    if isinstance(positions, torch.Tensor):  # padded BoolTensor[batch, pos]
        return bool(positions[b, col])
    if isinstance(positions, str):
        positions = parse_positions(positions)
    if isinstance(positions, Selector):
        return selector_claims(positions, t, n, spans)
    return selector_claims(Indices(tuple(int(i) for i in list(positions)[b])), t, n, spans)


def _as_module(name: str, donor: DonorLike, like: nn.Module) -> nn.Module:
    if isinstance(donor, LoadedModel):
        return donor.model
    if isinstance(donor, nn.Module):
        return donor
    return AutoModelForCausalLM.from_pretrained(str(donor), torch_dtype=next(like.parameters()).dtype)


def _rule_sites(loaded: LoadedModel, rule: Graft) -> list[tuple[str, Rows | None]]:
    """(module path, rows) of every site the rule names."""
    adapter = loaded.adapter
    comps = expand_components(rule.components, available=adapter.layer_components + adapter.model_components)
    out = []
    for comp in comps:
        layers = [None] if comp in MODEL_COMPONENTS else select_layers(rule.layers, adapter.n_layers)
        for layer in layers:
            out.extend((s.path, s.rows) for s in adapter.sites(comp, layer))
    return out


def _literal_sites(loaded: LoadedModel, rule: Graft | HeadGraft) -> list[tuple[str, Rows | None, Rows | None]]:
    """(module path, output rows, input columns) of every site a rule names; a head graft names
    its heads' rows of q, k, v and columns of o (`graftlens.graft.heads`)."""
    if isinstance(rule, HeadGraft):
        parts = rule.part_list()
        return [(s.path, s.rows, s.cols) for head in rule.heads for s in head_sites(loaded, head, parts)]
    return [(path, rows, None) for path, rows in _rule_sites(loaded, rule)]


def site_owners(
    recipient: LoadedModel | nn.Module, rules: Sequence[Graft], n_tokens: int, spans: Spans | None = None
) -> dict[tuple[str, Rows | None], list[str | None]]:
    """Who computes each site the rules touch, token by token, in one example of ``n_tokens``
    tokens: ``{(module path, rows): [donor name or None (the recipient), one per token]}``.

    The plain reading of the rules (in order, a later one wins), for tests that check what a
    recipe grafts where."""
    loaded = as_loaded(recipient)
    sites = [_rule_sites(loaded, rule) for rule in rules]
    keys = list(dict.fromkeys(site for rule_sites in sites for site in rule_sites))
    owners: dict[tuple[str, Rows | None], list[str | None]] = {key: [None] * n_tokens for key in keys}
    for t in range(n_tokens):
        for rule, rule_sites in zip(rules, sites):
            if not rule_claims(rule.positions, 0, t, t, n_tokens, spans):
                continue
            for path, rows in rule_sites:
                for key in keys:
                    if key[0] == path and (rows is None or key[1] == rows):
                        owners[key][t] = rule.donor
    return owners


@torch.no_grad()
def reference_forward(
    recipient: LoadedModel | nn.Module,
    donors: Mapping[str, DonorLike],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rules: Sequence[Graft | HeadGraft],
    spans: Sequence[Spans] | None = None,
) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` by the literal definition; padded positions are NaN."""
    loaded = as_loaded(recipient)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    for rule in rules:
        if rule.donor not in donors:
            raise GraftRuleError(f"graft rule names donor {rule.donor!r}; the donors are: {', '.join(donors)}")
    donor_models = {name: _as_module(name, d, loaded.model) for name, d in donors.items()}
    sites = [_literal_sites(loaded, rule) for rule in rules]  # per rule: [(path, rows, cols)]
    paths = list(dict.fromkeys(site[0] for rule_sites in sites for site in rule_sites))
    model, originals = _untied_copy(loaded.model, paths)

    batch, seq = input_ids.shape
    vocab = model.get_output_embeddings().weight.shape[0]
    logits = torch.full((batch, seq, vocab), float("nan"), dtype=torch.float32)
    for b in range(batch):
        real = attention_mask[b].bool().nonzero().squeeze(1).tolist()  # padded columns of real tokens
        example_spans = spans[b] if spans is not None else None
        cache = None
        for t, col in enumerate(real):
            # Start from the recipient's weights, then let each claiming rule write, in order (later wins).
            _restore(model, originals)
            for rule, rule_sites in zip(rules, sites):
                if rule_claims(rule.positions, b, col, t, len(real), example_spans):
                    donor = donor_models[rule.donor]
                    for path, rows, cols in rule_sites:
                        _write_donor(model.get_submodule(path), donor.get_submodule(path), originals[path], rows, cols)
            out = model(
                input_ids=input_ids[b : b + 1, col : col + 1],
                position_ids=torch.tensor([[t]], device=input_ids.device),
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            logits[b, col] = out.logits[0, -1].float()
    return logits


def _untied_copy(model: nn.Module, paths: Sequence[str]) -> tuple[nn.Module, dict[str, dict[str, torch.Tensor]]]:
    """A copy of ``model`` whose weights at ``paths`` can be overwritten one by one (untied:
    writing embed's weights must not write lm_head's, and vice versa), and those weights' originals."""
    model = copy.deepcopy(model)
    originals: dict[str, dict[str, torch.Tensor]] = {}
    for path in paths:
        module = model.get_submodule(path)
        originals[path] = {}
        for pname, p in list(module.named_parameters(recurse=False)):
            originals[path][pname] = p.detach().clone()
            setattr(module, pname, nn.Parameter(p.detach().clone(), requires_grad=False))
    return model, originals


def _restore(model: nn.Module, originals: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    for path, params in originals.items():
        for pname, original in params.items():
            getattr(model.get_submodule(path), pname).copy_(original)


def _write_donor(module: nn.Module, donor: nn.Module, originals: Mapping[str, torch.Tensor], rows, cols) -> None:
    """Write the donor module's weights into ``module``: all of them, its output ``rows`` (head
    row blocks), or a head's input ``cols`` of o (its weight only)."""
    donor_params = dict(donor.named_parameters(recurse=False))
    for pname in originals:
        w = getattr(module, pname)
        donor_w = donor_params[pname].to(device=w.device, dtype=w.dtype)
        dim = output_dim(module, pname)
        if cols is not None:
            if pname == "weight":
                for a, z in cols:
                    w.narrow(1 - dim, a, z - a).copy_(donor_w.narrow(1 - dim, a, z - a))
        elif rows is None:
            w.copy_(donor_w)
        else:
            for a, z in rows:
                w.narrow(dim, a, z - a).copy_(donor_w.narrow(dim, a, z - a))


@torch.no_grad()
def reference_generate(
    recipient: LoadedModel | nn.Module,
    donors: Mapping[str, DonorLike],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rules: Sequence[Graft],
    spans: Sequence[Spans],
    n_new: int,
) -> torch.Tensor:
    """``LongTensor[batch, n_new]``: greedy tokens by the literal definition, each chosen from a
    fresh `reference_forward` over the prompt and the tokens chosen before it (``spans``
    must hold each prompt's ``LT``, so that the chosen tokens count as new)."""
    ids, mask = input_ids, attention_mask
    chosen = []
    for _ in range(n_new):
        token = reference_forward(recipient, donors, ids, mask, rules, spans)[:, -1].argmax(-1, keepdim=True).to(ids.device)
        chosen.append(token)
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return torch.cat(chosen, 1) if chosen else input_ids.new_zeros((input_ids.shape[0], 0))
