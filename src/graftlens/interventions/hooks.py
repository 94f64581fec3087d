"""The hook layer shared by every activation-level method: capture points, or edit them.

Two context managers, in the manner of baukit's ``Trace``/``edit_output``::

    with capture(model, ["z.3", "resid_post.5"]) as cache:
        model(input_ids=...)
    cache["z.3"]  # [batch, pos, head, d_head]

    with edit(model, {"z.3": lambda z: z * 0}):
        model(input_ids=...)

Only the points asked for are hooked, and the hooks are removed on exit. Hooks are plain
PyTorch module hooks, so they compose with the grafting engine (which replaces ``forward``,
not ``__call__``): a point captured inside ``grafting(...)`` holds the grafted activation.
A point both edited and captured is captured after the edit, in whichever order the blocks
were entered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from graftlens.interventions.points import HookSite, Point, hook_site, parse_point
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded

Edit = Callable[[torch.Tensor], torch.Tensor]
"""Takes a point's activation (the shape `points` lists), returns
the activation to use instead (same shape)."""

PointLike = Point | str


class ActivationCache(dict):
    """Captured activations by `Point`; ``cache["z.3"]`` works too.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> with graftlens.capture(m, ["z.1"]) as cache:
        ...     _ = m.model(input_ids=torch.tensor([[5, 6, 7]]))
        >>> cache["z.1"] is cache[graftlens.Point("z", 1)], "z.1" in cache
        (True, True)
    """

    def __getitem__(self, key: PointLike) -> torch.Tensor:
        return super().__getitem__(parse_point(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(parse_point(key)) if isinstance(key, str | Point) else False


def _main_tensor(value: Any) -> torch.Tensor:
    """Decoder layers return a tensor or a tuple whose first item is the hidden states."""
    return value[0] if isinstance(value, tuple) else value


def _with_main_tensor(value: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *value[1:]) if isinstance(value, tuple) else tensor


def _hook(module: nn.Module, site: HookSite, fn: Callable[[torch.Tensor], torch.Tensor | None], first: bool):
    """Register ``fn`` on ``site``; when it returns a tensor, that tensor replaces the point.

    Edits are registered ``first`` (ahead of every other hook of the module), so a capture
    records the activation the model goes on with, whichever context was entered first."""
    if site.side == "in":

        def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            x = args[0] if args else kwargs["hidden_states"]
            new = fn(site.read(x))
            if new is None:
                return None
            x = site.write(x, new)
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=first)

    def post_hook(mod: nn.Module, args: tuple, output: Any) -> Any:
        x = _main_tensor(output)
        new = fn(site.read(x))
        if new is None:
            return None
        return _with_main_tensor(output, site.write(x, new))

    return module.register_forward_hook(post_hook, prepend=first)


@contextmanager
def _hooked(
    model: LoadedModel | nn.Module, fns: Mapping[Point, Callable[[torch.Tensor], torch.Tensor | None]], first: bool
) -> Iterator[None]:
    loaded = as_loaded(model)
    handles = []
    try:
        for point, fn in fns.items():
            site = hook_site(loaded.adapter, point)
            handles.append(_hook(loaded.model.get_submodule(site.path), site, fn, first))
        yield
    finally:
        for h in handles:
            h.remove()


@checked
@contextmanager
def capture(model: LoadedModel | nn.Module, points: Iterable[PointLike], keep_graph: bool = False) -> Iterator[ActivationCache]:
    """Record ``points`` on every forward call inside the block (the last call's values win).

    Args:
        model: a loaded or HF model of a supported family.
        points: ``"name.layer"`` strings (``"resid_pre.3"``, ``"z.12"``, TransformerLens names
            too) or `Point` objects.
        keep_graph: keep the values in the autograd graph (for gradients of a metric with
            respect to an activation); by default they are detached copies.

    Yields:
        an `ActivationCache`, filled as the model runs: ``[batch, pos, d_model]`` for
        stream points, ``[batch, pos, head, d_head]`` for ``z``, ``q``, ``k``, ``v``.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> with graftlens.capture(m, ["z.1", "resid_post.3"]) as cache:
        ...     _ = m.model(input_ids=torch.tensor([[5, 6, 7]]))
        >>> cache["z.1"].shape, cache["resid_post.3"].shape
        (torch.Size([1, 3, 4, 8]), torch.Size([1, 3, 32]))
    """
    cache = ActivationCache()
    wanted = sorted({parse_point(p) for p in points})

    def recorder(point: Point) -> Callable[[torch.Tensor], None]:
        def record(x: torch.Tensor) -> None:
            cache[point] = x.clone() if keep_graph else x.detach().clone()

        return record

    with _hooked(model, {p: recorder(p) for p in wanted}, first=False):
        yield cache


@checked
@contextmanager
def edit(model: LoadedModel | nn.Module, edits: Mapping[PointLike, Edit]) -> Iterator[None]:
    """Replace each point's activation by ``edits[point](activation)`` on every forward call.

    Args:
        model: a loaded or HF model of a supported family.
        edits: point → a function of the activation (its shape as `capture` gives it)
            returning the activation to use instead, of the same shape.

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7]])
        >>> plain = graftlens.run_logits(m, ids)
        >>> with graftlens.edit(m, {"mlp_out.2": lambda x: x * 0}):
        ...     ablated = graftlens.run_logits(m, ids)
        >>> with graftlens.edit(m, {"mlp_out.2": lambda x: x}):
        ...     same = graftlens.run_logits(m, ids)
        >>> torch.equal(same, plain), torch.equal(ablated, plain)
        (True, False)
    """
    parsed: dict[Point, Edit] = {}
    for key, fn in edits.items():
        parsed[parse_point(key)] = fn
    with _hooked(model, parsed, first=True):
        yield
