"""The literal definition of dynamic weight grafting: slow, obviously correct, the tests' oracle.

For each example, token by token with a KV cache: before feeding token t, write into a private
copy of the base model, for every grafted site, the weights of whoever owns that site at t
(base or donor; for fused projections, row by row), then run the one token. Later tokens read
the keys/values that earlier tokens computed under their own weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from graftlens.graft.donors import donor_weights
from graftlens.graft.engine import DonorLike
from graftlens.graft.positions import Spans
from graftlens.graft.rules import Graft, compile_rules, touched_modules
from graftlens.models.loading import LoadedModel, as_loaded


def _out_dim(module: nn.Module, pname: str) -> int:
    """Dimension of a parameter that indexes output features (Conv1D stores weight as [in, out])."""
    return 1 if isinstance(module, Conv1D) and pname == "weight" else 0


@torch.no_grad()
def reference_forward(
    base: LoadedModel | nn.Module,
    donors: Mapping[str, DonorLike],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rules: Sequence[Graft],
    spans: Sequence[Spans] | None = None,
) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` by the literal definition; padded positions are NaN."""
    loaded = as_loaded(base)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    names = list(donors)
    paths = touched_modules(loaded.adapter, rules)
    weights = [donor_weights(n, donors[n], loaded.model, paths) for n in names]
    plans = compile_rules(loaded.adapter, rules, names, attention_mask, spans)

    model = copy.deepcopy(loaded.model)  # the copy whose weights get overwritten
    originals: dict[str, dict[str, torch.Tensor]] = {}
    for path in paths:
        module = model.get_submodule(path)
        originals[path] = {}
        for pname, p in list(module.named_parameters(recurse=False)):
            originals[path][pname] = p.detach().clone()
            # Untie: writing embed's weights must not write lm_head's, and vice versa.
            setattr(module, pname, nn.Parameter(p.detach().clone(), requires_grad=False))

    batch, seq = input_ids.shape
    vocab = model.get_output_embeddings().weight.shape[0]
    logits = torch.full((batch, seq, vocab), float("nan"), dtype=torch.float32)
    for b in range(batch):
        real = attention_mask[b].bool().nonzero().squeeze(1).tolist()  # padded indices of real tokens
        cache = None
        for t, col in enumerate(real):
            for path in paths:
                module = model.get_submodule(path)
                plan = plans.get(path)
                for pname, original in originals[path].items():
                    w = original.clone()
                    if plan is not None:
                        for rows, owner_map in zip(plan.segments, plan.owners):
                            owner = int(owner_map[b, col])
                            if owner == 0:
                                continue
                            donor_w = weights[owner - 1].params_for(path)[pname]
                            if rows is None:
                                w = donor_w.clone()
                            else:
                                dim = _out_dim(module, pname)
                                for a, z in rows:
                                    w.narrow(dim, a, z - a).copy_(donor_w.narrow(dim, a, z - a))
                    getattr(module, pname).copy_(w)
            out = model(
                input_ids=input_ids[b : b + 1, col : col + 1],
                position_ids=torch.tensor([[t]], device=input_ids.device),
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            logits[b, col] = out.logits[0, -1].float()
    return logits
