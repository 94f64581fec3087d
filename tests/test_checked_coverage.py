"""Every tensor a public entry point takes is checked before any forward pass: by `checked`,
which knows arguments by name (so renaming a parameter would silently drop its checks), or by
the function itself, listed here. A new tensor parameter fails this test until it is one or the other."""

from __future__ import annotations

import inspect
import typing

import torch

import graftlens
from graftlens.models.arguments import TOKEN_ARGUMENTS

# Names `checked` reads (graftlens.models.arguments.check_arguments).
CHECKED_BY_NAME = {*TOKEN_ARGUMENTS, "attention_mask", "target_ids", "hidden"}
# Tensors a function checks itself (shape, finiteness), each tested in test_valid_by_construction.
CHECKED_IN_BODY = {
    ("attention_knockout", "edges"),
    ("cancel_sublayers", "means"),
    ("mean_ablated_logits", "means"),
    ("edge_ablated_logits", "means"),
    ("faithfulness_curve", "means"),
}
ERRORS = {"GraftlensError", "ModelLoadError", "RecipeError", "DataError", "InterventionError", "StoreError"}


def _tensor_parameters(fn) -> list[str]:
    """Parameters annotated as a tensor (``torch.Tensor`` or ``torch.Tensor | None``)."""
    hints = typing.get_type_hints(getattr(fn, "__wrapped__", fn))
    plain = {torch.Tensor, torch.Tensor | None, typing.Optional[torch.Tensor]}  # noqa: UP045
    return [name for name, hint in hints.items() if name != "return" and hint in plain]


def _unchecked(functions: dict[str, object]) -> list[str]:
    found = []
    for name, fn in functions.items():
        for param in _tensor_parameters(fn):
            by_name = hasattr(fn, "__wrapped__") and param in CHECKED_BY_NAME
            if not by_name and (name, param) not in CHECKED_IN_BODY:
                found.append(f"{name}({param})")
    return found


def test_every_tensor_argument_of_the_facade_is_checked() -> None:
    functions = {
        n: getattr(graftlens, n)
        for n in graftlens.__all__
        if not n.startswith("__") and n not in ERRORS and inspect.isfunction(getattr(graftlens, n))
    }
    assert len([f for f in functions.values() if _tensor_parameters(f)]) >= 15
    assert _unchecked(functions) == []


def test_a_renamed_or_unchecked_tensor_argument_is_found() -> None:
    from graftlens.models.arguments import checked

    @checked
    def renamed(model, input_tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """A parameter `checked` does not know by name."""

    def undecorated(model, input_ids: torch.Tensor) -> None:
        """No decorator: nothing reads its names."""

    assert _unchecked({"renamed": renamed, "undecorated": undecorated}) == ["renamed(input_tokens)", "undecorated(input_ids)"]
