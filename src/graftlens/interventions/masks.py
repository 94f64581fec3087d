"""Desiderata-based component masking (DCM; Davies et al. 2023, as Prakash et al. use it): learn
which heads of a group carry one kind of information.

A *desideratum* is a set of (clean prompt, corrupted prompt, expected answer) triples: if some heads
carry, say, the position of the correct object, then writing their corrupted outputs into the
clean run makes the model answer the object at the *corrupted* prompt's position in the *clean* context.
DCM learns a mask ``m = sigmoid(logits)`` over the candidate heads: each head's output at the
patched positions becomes ``z_clean + m · (z_corrupted - z_clean)``, and the loss is the answer's
cross-entropy plus ``λ · Σ m`` (sparsity). After training, heads with ``m > 0.5`` are the ones
the desideratum selects. Prakash et al. train with Adam, lr 0.1, λ = 0.01.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.interventions.hooks import ActivationCache, edit
from graftlens.interventions.paths import PathInputs, first_touched_column, head_outputs, paired_positions
from graftlens.interventions.points import Point
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.names import Head
from graftlens.models.run import frozen_parameters, run_logits
from graftlens.positions import PositionsLike, resolve_positions


class MaskError(InterventionError):
    """A mask's heads or a desideratum's examples do not fit the model."""


@dataclass(frozen=True)
class DesideratumBatch:
    """Base and corrupted inputs with the answer the desideratum expects (``LongTensor[batch]``):
    with the heads patched from the corrupted run, the clean run should predict ``answer_ids``.

    Args:
        inputs: the base (clean) and the corrupted prompts.
        answer_ids: ``LongTensor[batch]``, the answer expected with the masked heads patched.

    Examples:
        >>> import torch
        >>> from graftlens import DesideratumBatch, PathInputs
        >>> inputs = PathInputs(torch.tensor([[5, 6, 7]]), torch.tensor([[8, 6, 7]]))
        >>> batch = DesideratumBatch(inputs, torch.tensor([3]))
        >>> batch.answer_ids.shape
        torch.Size([1])
    """

    inputs: PathInputs
    answer_ids: torch.Tensor


@dataclass(frozen=True)
class DcmSettings:
    """Training settings: Prakash et al.'s λ and learning rate, a fixed number of epochs.

    Args:
        lam: λ, the weight of the mask's size in the loss (≥ 0).
        lr: Adam's learning rate (> 0).
        epochs: passes over the batches.
        init: the mask logits' start (0: sigmoid 0.5, undecided).
        seed: the torch random seed set before training.

    Examples:
        >>> from graftlens import DcmSettings
        >>> DcmSettings(epochs=4).lam, DcmSettings().lr
        (0.01, 0.1)
    """

    lam: float = 0.01
    lr: float = 0.1
    epochs: int = 10
    init: float = 0.0  # mask logits start here: sigmoid(0) = 0.5, undecided (a few epochs then decide each head)
    seed: int = 0

    def __post_init__(self) -> None:
        def number(name: str, ok, wanted: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
                raise MaskError(f"DcmSettings.{name} must be {wanted}, got {value!r}")

        number("lam", lambda v: v >= 0, "a finite number ≥ 0")
        number("lr", lambda v: v > 0, "a finite number > 0")
        number("init", lambda v: True, "a finite number")
        for name in ("epochs", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "epochs" else 0):
                raise MaskError(f"DcmSettings.{name} must be an integer ≥ {1 if name == 'epochs' else 0}, got {value!r}")


@dataclass(frozen=True)
class LearnedMask:
    heads: tuple[Head, ...]
    values: torch.Tensor  # [n heads], sigmoid of the learned logits
    losses: tuple[float, ...]  # mean loss per epoch

    @property
    def selected(self) -> list[Head]:
        return [h for h, v in zip(self.heads, self.values.tolist()) if v > 0.5]


def masked_patch_logits(
    model: LoadedModel | nn.Module,
    batch: DesideratumBatch,
    heads: Sequence[Head],
    mask: torch.Tensor,
    positions: PositionsLike = "LT",
    corrupted_positions: PositionsLike | None = None,
    grad: bool = False,
) -> torch.Tensor:
    """Last-position logits of the clean run with each head's output at ``positions`` moved
    toward its corrupted output by its mask value (``mask[i]`` for ``heads[i]``; 1 = patched)."""
    return _masked_patch_logits(model, batch, heads, mask, positions, corrupted_positions, grad)


def _masked_patch_logits(
    model: LoadedModel | nn.Module,
    batch: DesideratumBatch,
    heads: Sequence[Head],
    mask: torch.Tensor,
    positions: PositionsLike = "LT",
    corrupted_positions: PositionsLike | None = None,
    grad: bool = False,
    corrupted_cache: ActivationCache | None = None,
    prefix=None,
) -> torch.Tensor:
    """`masked_patch_logits`, for `learn_mask`'s epochs: ``corrupted_cache`` (the corrupted
    run's ``z``, from `head_outputs`) saves that run; ``prefix`` (a KV cache of the clean
    run's columns before the first patched one, from `graftlens.models.prefix.run_prefix`)
    makes the pass compute only the columns after it."""
    loaded = as_loaded(model)
    a = loaded.adapter
    for layer, head in heads:
        if not (0 <= layer < a.n_layers and 0 <= head < a.n_heads):
            raise MaskError(
                f"head {layer}.{head} out of range (the model has layers 0..{a.n_layers - 1}, heads 0..{a.n_heads - 1})"
            )
    inputs = batch.inputs
    clean_mask, corrupted_mask = inputs.masks
    if corrupted_cache is None:
        with torch.no_grad():
            _, corrupted_cache = head_outputs(loaded, inputs.corrupted_ids, inputs.corrupted_mask)
    width = inputs.clean_ids.shape[1]
    where_base = resolve_positions(positions, clean_mask, inputs.clean_spans)
    where_source = resolve_positions(
        positions if corrupted_positions is None else corrupted_positions, corrupted_mask, inputs.corrupted_spans
    )
    rows, bpos, spos = paired_positions(where_base, where_source, "patched")
    by_layer: dict[int, list[int]] = {}
    for i, (layer, _) in enumerate(heads):
        by_layer.setdefault(layer, []).append(i)

    def edit_for(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        idx = by_layer[layer]
        hs = torch.tensor([heads[i][1] for i in idx])
        source = corrupted_cache[Point("z", layer)][rows, spos][:, hs]  # [n, k, d_head]

        def fn(z: torch.Tensor) -> torch.Tensor:  # [batch, pos, head, d_head]
            m = mask[idx].to(z.device, z.dtype)[None, :, None]  # [1, k, 1]
            r, p = rows.to(z.device), bpos.to(z.device) - (width - z.shape[1])  # a continuation computes the last columns
            base = z[r, p][:, hs.to(z.device)]  # [n, k, d_head]
            out = z.clone()
            out[r[:, None], p[:, None], hs.to(z.device)[None, :]] = base + m * (source.to(z.device, z.dtype) - base)
            return out

        return fn

    with edit(loaded, {Point("z", layer): edit_for(layer) for layer in by_layer}):
        if prefix is not None:
            from graftlens.models.prefix import continue_prefix

            return continue_prefix(loaded, prefix, inputs.clean_ids, clean_mask, grad=grad)
        return run_logits(loaded, inputs.clean_ids, inputs.clean_mask, last_only=True, grad=grad)[:, -1]


def _prepare(loaded: LoadedModel, batch: DesideratumBatch, positions: PositionsLike):
    """A batch's corrupted activations and the KV cache of its clean columns before the first patched one."""
    from graftlens.models.prefix import run_prefix

    inputs = batch.inputs
    clean_mask, _ = inputs.masks
    with torch.no_grad():
        _, corrupted_cache = head_outputs(loaded, inputs.corrupted_ids, inputs.corrupted_mask)
    cut = first_touched_column(inputs, positions, "logits", "LT")
    return corrupted_cache, (run_prefix(loaded, inputs.clean_ids, clean_mask, cut) if cut > 0 else None)


def _check_batches(loaded: LoadedModel, batches: Sequence[DesideratumBatch]) -> None:
    """Every batch is a `DesideratumBatch` whose ``answer_ids`` are one vocabulary id per prompt."""
    if isinstance(batches, DesideratumBatch) or not isinstance(batches, Sequence) or len(batches) == 0:
        raise MaskError("learn_mask: batches must be a non-empty list of DesideratumBatch (there is nothing to learn from)")
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    for i, batch in enumerate(batches):
        if not isinstance(batch, DesideratumBatch):
            raise MaskError(f"learn_mask: batches[{i}] is a {type(batch).__name__}, not a DesideratumBatch")
        answers, n = batch.answer_ids, batch.inputs.clean_ids.shape[0]
        if not isinstance(answers, torch.Tensor) or answers.ndim != 1 or answers.shape[0] != n:
            shape = list(answers.shape) if isinstance(answers, torch.Tensor) else type(answers).__name__
            raise MaskError(f"learn_mask: batches[{i}].answer_ids must be [batch] = [{n}] token ids, got {shape}")
        integers = not (answers.dtype.is_floating_point or answers.dtype == torch.bool)
        if not integers or int(answers.min()) < 0 or int(answers.max()) >= vocab:
            raise MaskError(f"learn_mask: batches[{i}].answer_ids must hold token ids of the vocabulary (0..{vocab - 1})")


@checked
def learn_mask(
    model: LoadedModel | nn.Module,
    batches: Sequence[DesideratumBatch],
    heads: Sequence[Head],
    settings: DcmSettings = DcmSettings(),
    positions: PositionsLike = "LT",
    corrupted_positions: PositionsLike | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> LearnedMask:
    """Train a sigmoid mask over ``heads`` on the desideratum ``batches`` (one Adam step per batch).

    Desiderata-based component masking (Prakash et al.): the masked heads' outputs at
    ``positions`` are interpolated between the clean run and the corrupted run (read at
    ``corrupted_positions``) by ``sigmoid(logits)``; the loss is the cross-entropy of each batch's
    answer plus ``λ·Σ mask``. The model's own weights get no gradient.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        batches: the desideratum's `DesideratumBatch` batches (one Adam step each).
        heads: the heads masked, ``(layer, head)`` pairs.
        settings: λ, learning rate, epochs (`DcmSettings`).
        positions: where the masked heads are interpolated, a selector in prompt coordinates
            (``"FE"``, ``"LT"``, ``"(FE+LT)^C"``, index lists) on the clean run.
        corrupted_positions: where the corrupted run is read (default: ``positions``).
        progress: called as ``progress(epoch, mean_loss)`` after each epoch.

    Returns:
        LearnedMask: ``values`` (``[n heads]``, the sigmoids), ``selected`` (heads above
        0.5) and the mean loss of each epoch.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> from graftlens import DcmSettings, DesideratumBatch, PathInputs
        >>> clean, corrupted = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 6, 7, 8]])
        >>> batch = DesideratumBatch(PathInputs(clean, corrupted), answer_ids=torch.tensor([3]))
        >>> mask = graftlens.learn_mask(m, [batch], [(2, 0), (3, 1)], DcmSettings(epochs=3))
        >>> mask.values.shape, len(mask.losses)
        (torch.Size([2]), 3)
    """
    _check_batches(as_loaded(model), batches)
    if not isinstance(settings, DcmSettings):
        raise MaskError(f"learn_mask: settings must be DcmSettings, not {type(settings).__name__}")
    if not heads:
        raise MaskError("DCM needs at least one candidate head")
    if len(set(heads)) != len(heads):
        raise MaskError(f"DCM candidate heads repeat: {sorted(heads)}")
    loaded = as_loaded(model)
    torch.manual_seed(settings.seed)
    logits = torch.full((len(heads),), settings.init, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=settings.lr)
    losses = []
    prepared = [_prepare(loaded, batch, positions) for batch in batches]  # corrupted runs and clean prefixes, once
    with frozen_parameters(loaded.model):
        for epoch in range(settings.epochs):
            total = 0.0
            for batch, (corrupted_cache, prefix) in zip(batches, prepared):
                mask = torch.sigmoid(logits)
                out = _masked_patch_logits(
                    loaded,
                    batch,
                    heads,
                    mask,
                    positions,
                    corrupted_positions,
                    grad=True,
                    corrupted_cache=corrupted_cache,
                    prefix=prefix,
                )
                loss = nn.functional.cross_entropy(out.float(), batch.answer_ids.to(out.device)) + settings.lam * mask.sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
            losses.append(total / max(len(batches), 1))
            if progress is not None:
                progress(epoch + 1, losses[-1])
    return LearnedMask(tuple(heads), torch.sigmoid(logits.detach()), tuple(losses))


def desideratum_accuracy(
    model: LoadedModel | nn.Module,
    batches: Sequence[DesideratumBatch],
    heads: Sequence[Head],
    positions: PositionsLike = "LT",
    corrupted_positions: PositionsLike | None = None,
) -> float:
    """Share of examples answered as the desideratum expects with ``heads`` fully patched."""
    ok = n = 0
    for batch in batches:
        with torch.no_grad():
            if heads:
                out = _masked_patch_logits(model, batch, heads, torch.ones(len(heads)), positions, corrupted_positions)
            else:
                out = run_logits(as_loaded(model), batch.inputs.clean_ids, batch.inputs.clean_mask, last_only=True)[:, -1]
        ok += int((out.argmax(-1) == batch.answer_ids.to(out.device)).sum())
        n += len(batch.answer_ids)
    return ok / max(n, 1)
