"""The batched grafting engine: one forward pass, no model copies, no per-token loop.

Every projection, norm and embedding acts on each position independently, so grafting at
positions P is exactly ``out[P] = f(x[P]; θ_donor)``, ``out[~P] = f(x[~P]; θ_base)``. Each
grafted module's ``forward`` is replaced (for the duration of a `Grafter` context) by one
that gathers the rows of each owner, runs the module's own computation with that owner's
parameters on just those rows, and scatters the results back (`graftlens.graft.grafted`;
the MLP, being position-wise as a whole, is grafted as one block). Attention itself is untouched
(SDPA stays), so later positions read keys/values made with whatever weights applied where
they were computed — the literal token-by-token definition, in one batched pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.graft.donors import DonorLike, DonorWeights, donor_weights
from graftlens.graft.grafted import BatchState, GraftedBlock, GraftedModule
from graftlens.graft.heads import HeadGraft, expand_head_grafts
from graftlens.graft.rules import Graft, check_donor_names, compile_rules, module_sites, rule_sites, touched_modules
from graftlens.models.adapters import ArchitectureAdapter
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.run import call_sequence, run_logits
from graftlens.positions import Spans

PATCHED_COMPONENTS = ("embed", "ln_attn", "ln_mlp", "ln_final")  # cheaper to compute whole than to copy


class Grafter:
    """Grafts donors into a recipient model for any number of forward calls (a context manager).

    Each forward call of the recipient resolves the rules' positions for its batch from the
    call's ``attention_mask`` and from the examples' named spans: ``spans`` given here, or per
    batch with ``with grafter.on(batch_spans): ...`` (the donors' weights are prepared once and
    reused by every block). A call that continues a KV cache (``past_key_values``) grafts the new
    positions by the same rules, resolved on the whole sequence: the mask must cover the cached
    and the new positions, as transformers expects anyway.

    Args:
        recipient: the model grafted into (a `LoadedModel` or an HF causal LM).
        donors: donor name → a `LoadedModel`, an HF model, or a checkpoint directory (read
            lazily: only the tensors the rules graft).
        rules: `Graft` and `HeadGraft` rules; a later rule wins where rules overlap.
        spans: per example, the named spans the rules' positions name (or per batch with ``on``).

    Examples:
        One grafter, batches with their own spans:
        >>> import torch, graftlens
        >>> from graftlens import Graft
        >>> from graftlens.models import tiny_model
        >>> recipient, ft = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
        >>> rules = [Graft("ft", "mlp", "half2", "FE+LT")]
        >>> grafter = graftlens.Grafter(recipient, {"ft": ft}, rules)
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> with grafter.on([{"FE": (0, 2)}]):
        ...     a = graftlens.run_logits(recipient, ids, last_only=True)
        >>> with grafter.on([{"FE": (1, 3)}]):
        ...     b = graftlens.run_logits(recipient, ids, last_only=True)
        >>> torch.equal(a, b), grafter.donor_bytes
        (False, {'ft': 0})
    """

    def __init__(
        self,
        recipient: LoadedModel | nn.Module,
        donors: Mapping[str, DonorLike],
        rules: Sequence[Graft | HeadGraft],
        spans: Sequence[Spans] | None = None,
    ):
        self.recipient = as_loaded(recipient)
        self.rules, donors = expand_head_grafts(self.recipient, donors, rules)
        self.donor_names = list(donors)
        self._spans = spans
        adapter = self.recipient.adapter
        self._all_sites = module_sites(adapter)
        check_donor_names(self.rules, self.donor_names)  # before loading any donor tensor
        paths = touched_modules(adapter, self.rules)
        model = self.recipient.model
        self.donor_weights: dict[str, DonorWeights] = {
            name: donor_weights(name, donor, model, paths) for name, donor in donors.items()
        }
        patched = _patched_paths(adapter)
        submodules = dict(model.named_modules())
        self._modules = {
            path: GraftedModule(
                submodules[path],
                path,
                self._all_sites[path],
                [self.donor_weights[n].params_for(path) for n in self.donor_names],
                patch=path in patched,
            )
            for path in paths
        }
        self._blocks = _mlp_blocks(adapter, submodules, self._modules)
        self._head_paths = {site.path for site in adapter.sites("lm_head")} & set(self._modules)
        self._hook: Any = None

    @property
    def spans(self) -> Sequence[Spans] | None:
        """The named spans of the examples the next forward calls run on (see `on`)."""
        return self._spans

    @contextmanager
    def on(self, spans: Sequence[Spans] | None) -> Iterator[Grafter]:
        """Graft every forward call inside the block, for examples whose named spans are ``spans``."""
        previous, self._spans = self._spans, spans
        try:
            with self:
                yield self
        finally:
            self._spans = previous

    @property
    def donor_bytes(self) -> dict[str, int]:
        """Bytes of donor tensors held beyond already-loaded models, per donor."""
        return {name: w.bytes_held for name, w in self.donor_weights.items()}

    def _prepare(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask, cached, n_new = call_sequence(args, kwargs, "grafting")
        if mask.shape[1] != cached + n_new:
            raise InterventionError(
                f"grafting a cache continuation needs the attention mask of the whole sequence: "
                f"{cached} cached + {n_new} new positions, the mask has {mask.shape[1]}"
            )
        # Rules resolve on the whole sequence (prompt coordinates: FE, LT, ... as in a full pass);
        # a continuation computes only the last n_new positions, so only their owners are used.
        plans = compile_rules(self.recipient.adapter, self.rules, self.donor_names, mask, self._spans, self._all_sites)
        if cached:
            plans = {path: plan.last(n_new) for path, plan in plans.items()}
            mask = mask[:, -n_new:]
        state = BatchState((int(mask.shape[0]), int(mask.shape[1])), padding=~mask.bool())
        # With ``logits_to_keep=k`` the unembedding computes only the last k positions.
        keep = kwargs.get("logits_to_keep", 0)
        head_state = state
        if self._head_paths and isinstance(keep, int) and 0 < keep < mask.shape[1]:
            head_state = BatchState((int(mask.shape[0]), keep), padding=~mask[:, -keep:].bool())
            plans = {p: plan.last(keep) if p in self._head_paths else plan for p, plan in plans.items()}
        for path, grafted in self._modules.items():
            grafted.set_plan(plans.get(path), head_state if path in self._head_paths else state)
        for block in self._blocks:
            block.set_plan(plans, state)

    def __enter__(self) -> Grafter:
        for grafted in [*self._modules.values(), *self._blocks]:
            grafted.install()
        self._hook = self.recipient.model.register_forward_pre_hook(self._prepare, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for grafted in [*self._modules.values(), *self._blocks]:
            grafted.uninstall()
        for block in self._blocks:
            block.set_plan({}, None)
        for module in self._modules.values():
            module.set_plan(None, None)


def _patched_paths(adapter: ArchitectureAdapter) -> set[str]:
    """Modules computed whole and patched (norms, embeddings)."""
    present = [c for c in PATCHED_COMPONENTS if c in adapter.layer_components + adapter.model_components]
    if not present:
        return set()
    return {site.path for site in rule_sites(adapter, Graft("", present, "all"))}


def _mlp_blocks(
    adapter: ArchitectureAdapter, submodules: Mapping[str, nn.Module], modules: Mapping[str, GraftedModule]
) -> list[GraftedBlock]:
    """One grafted block per layer whose position-wise MLP holds grafted modules."""
    blocks: dict[str, list[GraftedModule]] = {}
    for layer in range(adapter.n_layers):
        block = adapter.mlp_block(layer)
        if block is not None:
            blocks[block] = []
    for path, module in modules.items():
        parts = path.split(".")
        enclosing = (".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1))
        block = next((p for p in enclosing if p in blocks), None)
        if block is not None:
            blocks[block].append(module)
    return [GraftedBlock(submodules[path], path, members) for path, members in blocks.items() if members]


@checked
def grafting(
    recipient: LoadedModel | nn.Module,
    donors: Mapping[str, DonorLike],
    rules: Sequence[Graft | HeadGraft],
    spans: Sequence[Spans] | None = None,
) -> Grafter:
    """Graft ``donors`` into ``recipient`` by ``rules`` on every forward call inside the block.

    Args:
        recipient: the model grafted into.
        donors: donor name → a loaded model, an HF model, or a checkpoint directory (read lazily).
        rules: `Graft` rules; a later rule wins where rules overlap.
        spans: per example, the named spans the rules' selectors name.

    Returns:
        Grafter: a context manager (``with grafter.on(spans): ...`` for other batches).

    Examples:
        Grafting nothing is the recipient bit for bit, grafting everything is the donor:
        >>> import torch, graftlens
        >>> from graftlens import Graft
        >>> from graftlens.models import tiny_model
        >>> recipient, ft = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> with graftlens.grafting(recipient, {"ft": ft}, []):
        ...     nothing = graftlens.run_logits(recipient, ids)
        >>> with graftlens.grafting(recipient, {"ft": ft}, [Graft("ft", "all", "all", None)]):
        ...     everything = graftlens.run_logits(recipient, ids)
        >>> torch.equal(nothing, graftlens.run_logits(recipient, ids))
        True
        >>> torch.allclose(everything, graftlens.run_logits(ft, ids), atol=1e-5)
        True
    """
    return Grafter(recipient, donors, rules, spans)


@checked
def grafted_forward(
    recipient: LoadedModel | nn.Module,
    donors: Mapping[str, DonorLike],
    rules: Sequence[Graft | HeadGraft],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    spans: Sequence[Spans] | None = None,
    grad: bool = False,
    *,
    last_only: bool = False,
) -> torch.Tensor:
    """Logits of ``recipient`` with ``rules`` grafting ``donors`` in, in one batched pass.

    Args:
        recipient: the model grafted into.
        donors: donor name → a loaded model, an HF model, or a checkpoint directory (read lazily:
            only the tensors the rules graft).
        rules: `Graft` rules; a later rule wins where rules overlap.
        input_ids: ``LongTensor[batch, pos]``, left-padded (right padding only with
            ``last_only=False``: the last column is read as each prompt's last token).
        attention_mask: ``[batch, pos]``; None means no padding.
        spans: per example, the named spans (``FE``, ``title``, ...) the rules' selectors name.
        grad: keep the autograd graph (the donors' tensors get no gradient).
        last_only: compute the unembedding at the last position only (``[batch, 1, vocab]``):
            what a caller reading the next-token prediction needs, and cheaper.

    Returns:
        logits ``[batch, pos, vocab]`` (``[batch, 1, vocab]`` with ``last_only``).

    Examples:
        >>> import graftlens, torch
        >>> from graftlens import Graft
        >>> from graftlens.models import tiny_model
        >>> recipient, ft = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> rules = [Graft("ft", "all", "all", None)]
        >>> everything = graftlens.grafted_forward(recipient, {"ft": ft}, rules, ids)
        >>> torch.allclose(everything, graftlens.run_logits(ft, ids, None), atol=1e-5)
        True
        >>> rules = [Graft("ft", "mlp", "half2", "LT")]
        >>> graftlens.grafted_forward(recipient, {"ft": ft}, rules, ids, last_only=True).shape
        torch.Size([1, 1, 96])
    """
    loaded = as_loaded(recipient)
    with grafting(loaded, donors, rules, spans):
        return run_logits(loaded, input_ids, attention_mask, last_only, grad=grad)


@checked
def grafted_generate(
    recipient: LoadedModel | nn.Module,
    donors: Mapping[str, DonorLike],
    rules: Sequence[Graft | HeadGraft],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    spans: Sequence[Spans],
    n_new: int,
) -> torch.Tensor:
    """``LongTensor[batch, n_new]``: what ``recipient`` with ``rules`` grafting ``donors`` in says after
    each (left-padded) prompt, greedily, one token per call with a KV cache.

    ``spans`` must hold each prompt's ``LT`` (tokenized prompts' spans do): the generated tokens
    are then *new* and each is grafted as the last token of the sequence so far — ``LT`` grafts
    every generated token (as the paper's token-by-token code does), ``"new"`` all of them,
    ``FE`` none.

    Args:
        recipient: the model grafted into (a `LoadedModel` or an HF causal LM).
        donors: donor name → a `LoadedModel`, an HF model, or a checkpoint directory (read
            lazily: only the tensors the rules graft).
        rules: `Graft` and `HeadGraft` rules; a later rule wins where rules overlap.
        input_ids: ``LongTensor[batch, pos]``, left-padded prompts.
        attention_mask: ``[batch, pos]``, 1 on real tokens.
        spans: per prompt, its named spans, ``LT`` included.
        n_new: the number of tokens to generate.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens import Graft
        >>> from graftlens.models import tiny_model
        >>> recipient, ft = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
        >>> ids, spans = torch.tensor([[5, 6, 7, 8]]), [{"FE": (0, 2), "LT": (3, 4)}]
        >>> rules = [Graft("ft", "all", "all", "FE+LT")]
        >>> mask = torch.ones_like(ids)
        >>> graftlens.grafted_generate(recipient, {"ft": ft}, rules, ids, mask, spans, 3).shape
        torch.Size([1, 3])
    """
    from graftlens.models.generate import greedy_continuation

    loaded = as_loaded(recipient)
    if any("LT" not in s for s in spans):
        raise InterventionError("grafted generation needs each prompt's LT span, to tell the prompt from the generated tokens")
    with grafting(loaded, donors, rules, spans):
        return greedy_continuation(loaded, input_ids, attention_mask, n_new)
