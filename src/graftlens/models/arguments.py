"""The boundary of the library: public entry points check their arguments before any forward.

A wrong shape, dtype, device or range is one `InterventionError` naming the
argument, not a RuntimeError from deep inside torch. `checked` reads a function's arguments
by their names (``input_ids``, ``attention_mask``, ``target_ids``, ``layers``, ...), so every entry
point that takes them gets the same checks by one decorator. A right-padded batch is refused
wherever the last column is read as each prompt's last token (everywhere but ``last_only=False``),
so a padding column's logits are never returned as a prompt's.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.models.loading import LoadedModel
from graftlens.models.text import encode_texts

F = TypeVar("F", bound=Callable[..., Any])

MODEL_ARGUMENTS = ("model", "recipient")
TOKEN_ARGUMENTS = ("input_ids", "clean_ids", "corrupted_ids")  # [batch, pos] token ids, the first one the batch's reference


def checked(fn: F) -> F:
    """Decorate a public entry point: its arguments are checked by name before it runs."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        _pair_inputs(fn, signature, bound.arguments)
        unpack_inputs(fn.__name__, signature, bound.arguments)
        missing = [
            name
            for name, p in signature.parameters.items()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name not in bound.arguments
        ]
        if missing:
            raise TypeError(f"{fn.__name__}() missing required argument{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
        bound.apply_defaults()
        check_arguments(fn.__name__, bound.arguments)
        return fn(*bound.args, **bound.kwargs)

    return wrapper  # type: ignore[return-value]


def unpack_inputs(who: str, signature: inspect.Signature, arguments: dict[str, Any]) -> None:
    """Where a function takes token ids, also take `Prompts` (its mask, spans
    and targets fill the arguments of those names that were not given) or text (a string or a
    list of strings, read with the model's tokenizer and left-padded)."""
    params = signature.parameters
    for name in TOKEN_ARGUMENTS:
        value = arguments.get(name)
        if value is None or isinstance(value, torch.Tensor):
            continue
        first = name != "corrupted_ids"  # the corrupted run shares the clean one's mask and targets
        if _is_prompts(value):
            arguments[name] = value.input_ids
            fills = {"attention_mask": value.attention_mask, "spans": value.spans, "target_ids": value.target_ids}
            if not first:
                _same_mask(who, arguments, value.attention_mask)
                continue
        elif isinstance(value, str) or (isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value)):
            model = next((arguments[m] for m in MODEL_ARGUMENTS if m in arguments), None)
            ids, mask = encode_texts(getattr(model, "tokenizer", None), value, name)
            arguments[name] = ids
            fills = {"attention_mask": mask}
            if not first:
                _same_mask(who, arguments, mask)
                continue
        else:
            continue
        _fill_unset(params, arguments, fills)


def _fill_unset(params: Mapping[str, inspect.Parameter], arguments: dict[str, Any], fills: Mapping[str, Any]) -> None:
    """Each of ``fills`` the function takes and the caller left unset (None or not given)."""
    for key, filled in fills.items():
        if key in params and arguments.get(key) is None and filled is not None:
            arguments[key] = filled


def _pair_inputs(fn: Callable[..., Any], signature: inspect.Signature, arguments: dict[str, Any]) -> None:
    """Where a function takes ``inputs`` (a clean and a corrupted run: `PathInputs`), also take
    the pair ``(clean, corrupted)`` of `Prompts`: the type the parameter is annotated with makes
    it (``PathInputs.of``), and the clean prompts' targets fill ``target_ids`` when it is not given."""
    value = arguments.get("inputs")
    if not isinstance(value, tuple | list):
        return
    if len(value) != 2 or not all(_is_prompts(v) for v in value):
        kinds = ", ".join(type(v).__name__ for v in value)
        raise InterventionError(
            f"{fn.__name__}: inputs must be a PathInputs or a (clean, corrupted) pair of Prompts "
            f"(graftlens.prompts), not a {type(value).__name__} of {kinds or 'nothing'}"
        )
    arguments["inputs"] = typing.get_type_hints(fn)["inputs"].of(*value)
    _fill_unset(signature.parameters, arguments, {"target_ids": value[0].target_ids})


def _is_prompts(value: Any) -> bool:
    return all(isinstance(getattr(value, a, None), torch.Tensor) for a in ("input_ids", "attention_mask")) and hasattr(
        value, "spans"
    )


def _same_mask(who: str, arguments: Mapping[str, Any], mask: torch.Tensor) -> None:
    clean = arguments.get("attention_mask")
    if clean is not None and (clean.shape != mask.shape or not torch.equal(clean.cpu(), mask.cpu())):
        raise InterventionError(
            f"{who}: the corrupted prompts are padded differently from the clean ones: they must be token-aligned "
            "(the same number of tokens, prompt by prompt)"
        )


def check_arguments(who: str, arguments: Mapping[str, Any]) -> None:
    """Check the arguments of ``who`` that have a known name (see the module docstring)."""
    module = _model_of(who, arguments)
    # Right padding is refused wherever the last column is read as each prompt's last token.
    reads_last = not ("last_only" in arguments and arguments["last_only"] is False)
    ids = _check_token_inputs(who, arguments, module, reads_last)
    if ids is not None:
        target = arguments.get("target_ids")
        if target is not None:
            _check_targets(who, target, ids.shape[0], module)
        spans = arguments.get("spans")
        if spans is not None and len(spans) != ids.shape[0]:
            raise InterventionError(f"{who}: spans has {len(spans)} entries for a batch of {ids.shape[0]} prompts")
    # Layers are each function's own check (graftlens.models.names.select_layers: LayerSelectionError).
    _check_scalars(who, arguments, module)


def _check_token_inputs(
    who: str, arguments: Mapping[str, Any], module: nn.Module | None, reads_last: bool
) -> torch.Tensor | None:
    """Check the token ids (and their masks) of the arguments; the batch's reference ids
    ``[batch, pos]``: the first token argument given, or a `PathInputs`' clean ids."""
    batch: tuple[str, torch.Tensor] | None = None
    for name in TOKEN_ARGUMENTS:
        if arguments.get(name) is not None:
            ids = arguments[name]
            _check_ids(who, name, ids, module)
            if batch is None:  # (whether clean and corrupted inputs must align is the method's own check)
                batch = (name, ids)
    if batch is not None:
        first, ids = batch
        mask = arguments.get("attention_mask")
        if mask is not None:
            _check_mask(who, "attention_mask", mask, first, ids, reads_last)
        return ids
    inputs = arguments.get("inputs")
    if not isinstance(getattr(inputs, "clean_ids", None), torch.Tensor):  # not a PathInputs
        return None
    for side in ("clean", "corrupted"):
        ids, mask = getattr(inputs, f"{side}_ids"), getattr(inputs, f"{side}_mask")
        _check_ids(who, f"inputs.{side}_ids", ids, module)
        if mask is not None:
            _check_mask(who, f"inputs.{side}_mask", mask, f"inputs.{side}_ids", ids, reads_last)
    return inputs.clean_ids


def _check_scalars(who: str, arguments: Mapping[str, Any], module: nn.Module | None) -> None:
    """``hidden`` states fit the model; ``scale`` is a finite number; ``windows`` is not empty."""
    hidden = arguments.get("hidden")
    if module is not None and hidden is not None:
        _check_hidden(who, hidden, module)
    scale = arguments.get("scale")
    if "scale" in arguments and (isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale)):
        raise InterventionError(f"{who}: scale must be a finite number, got {scale!r}")
    if "windows" in arguments:
        windows = arguments["windows"]
        if isinstance(windows, str | bytes) or not hasattr(windows, "__len__") or len(windows) == 0:
            raise InterventionError(f"{who}: windows must be a non-empty list of layer windows, got {windows!r}")


def check_finite(who: str, name: str, value: torch.Tensor) -> None:
    """Refuse a tensor holding NaN or ±inf (it would turn every logit it reaches into NaN)."""
    if value.dtype.is_floating_point or value.dtype.is_complex:
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            n = int(bad.sum())
            raise InterventionError(f"{who}: {name} holds {n} NaN or infinite value{'s' if n > 1 else ''}")


def _model_of(who: str, arguments: Mapping[str, Any]) -> nn.Module | None:
    for name in MODEL_ARGUMENTS:
        if name in arguments:
            value = arguments[name]
            if isinstance(value, LoadedModel):
                return value.model
            if isinstance(value, nn.Module):
                return value
            raise InterventionError(
                f"{who}: {name} must be a LoadedModel (graftlens.load_model) or a torch module, not {type(value).__name__}"
            )
    return None


def _device(module: nn.Module) -> torch.device | None:
    """Where the model takes its input ids (None when its embedding is offloaded)."""
    embedding = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    weight = getattr(embedding, "weight", None)
    if weight is None or weight.device.type == "meta":
        return None
    return weight.device


def _vocab(module: nn.Module) -> int | None:
    embedding = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    size = getattr(embedding, "num_embeddings", None)
    return int(size) if size is not None else None


def _check_ids(who: str, name: str, ids: Any, module: nn.Module | None) -> None:
    if not isinstance(ids, torch.Tensor):
        raise InterventionError(f"{who}: {name} must be a tensor of token ids [batch, pos], not {type(ids).__name__}")
    if ids.ndim != 2:
        raise InterventionError(f"{who}: {name} must be [batch, pos], got shape {list(ids.shape)}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InterventionError(f"{who}: {name} is empty (shape {list(ids.shape)})")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InterventionError(f"{who}: {name} must hold integer token ids, not {ids.dtype}")
    if module is None:
        return
    device = _device(module)
    if device is not None and ids.device != device:
        raise InterventionError(f"{who}: {name} is on {ids.device}, the model takes its inputs on {device}: move it there")
    vocab = _vocab(module)
    if vocab is not None:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise InterventionError(f"{who}: {name} holds token id {bad}, outside the model's vocabulary (0..{vocab - 1})")


def _check_mask(who: str, name: str, mask: Any, first: str, ids: torch.Tensor, reads_last: bool = True) -> None:
    if not isinstance(mask, torch.Tensor):
        raise InterventionError(f"{who}: {name} must be a tensor [batch, pos] of 0 and 1, not {type(mask).__name__}")
    if mask.shape != ids.shape:
        raise InterventionError(f"{who}: {name} {list(mask.shape)} must have the shape of {first} {list(ids.shape)}")
    if mask.device != ids.device:
        raise InterventionError(f"{who}: {name} is on {mask.device}, {first} on {ids.device}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InterventionError(f"{who}: {name} must hold only 0 (padding) and 1 (a token)")
    if reads_last and bool((mask[:, -1] == 0).any()):
        row = int((mask[:, -1] == 0).nonzero()[0, 0])
        raise InterventionError(
            f"{who}: {name} is right-padded (row {row} ends in padding), and {who} reads the last column as each "
            "prompt's last token: pad on the left (tokenizer.padding_side = 'left')"
        )


def _check_targets(who: str, target: Any, batch: int, module: nn.Module | None) -> None:
    if not isinstance(target, torch.Tensor) or target.ndim != 1:
        shape = list(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise InterventionError(f"{who}: target_ids must be a 1-d tensor [batch] of token ids, got {shape}")
    if target.shape[0] != batch:
        raise InterventionError(f"{who}: target_ids has {target.shape[0]} entries for a batch of {batch} prompts")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise InterventionError(f"{who}: target_ids must hold integer token ids, not {target.dtype}")
    out = module.get_output_embeddings() if module is not None and hasattr(module, "get_output_embeddings") else None
    vocab = getattr(getattr(out, "weight", None), "shape", [None])[0]
    if vocab is not None and (int(target.min()) < 0 or int(target.max()) >= vocab):
        raise InterventionError(f"{who}: target_ids holds a token id outside the model's vocabulary (0..{vocab - 1})")


def _check_hidden(who: str, hidden: Any, module: nn.Module) -> None:
    if not isinstance(hidden, torch.Tensor) or not hidden.dtype.is_floating_point:
        raise InterventionError(f"{who}: hidden must be a float tensor [..., d_model]")
    width = getattr(getattr(module, "config", None), "hidden_size", None)
    if isinstance(width, int) and hidden.shape[-1] != width:
        raise InterventionError(f"{who}: hidden has width {hidden.shape[-1]}, the model's residual stream {width}")
    out = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    if weight is not None and weight.device.type != "meta" and hidden.dtype != weight.dtype:
        raise InterventionError(
            f"{who}: hidden is {hidden.dtype}, the model computes in {weight.dtype}: pass hidden.to({weight.dtype})"
        )
    check_finite(who, "hidden", hidden)
