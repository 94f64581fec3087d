"""A `Patch`: an activation written into a run at some positions (and, for per-head points,
some heads), as an edit of the hook layer. Activation patching, CMAP and the continued runs of
`CachedRun` all write patches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graftlens.errors import InterventionError
from graftlens.interventions.hooks import Edit
from graftlens.interventions.points import Point
from graftlens.models.arguments import check_finite
from graftlens.positions import PositionsLike


class PatchError(InterventionError):
    """A patch does not fit the run it is written into (shape, heads, models)."""


@dataclass(frozen=True)
class Patch:
    """Write ``value`` into ``point`` at ``positions`` and, for per-head points, only for
    ``heads`` (None = all heads).

    ``positions`` are named as everywhere in graftlens: a selector in prompt coordinates
    (``"FE"``, ``"LT"``, ``"(FE+LT)^C"``, per-example index lists; None = every position),
    resolved on the run the patch is written into, with that run's spans.

    Args:
        point: the `Point` written.
        value: the activation written, of the point's shape (``[batch, pos, ...]``).
        positions: where it is written, a selector in prompt coordinates (``"FE"``, ``"LT"``,
            ``"(FE+LT)^C"``, index lists); None: every position.
        heads: for per-head points, the heads written (None: all).

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> clean, corrupted = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 9, 7, 8]])
        >>> _, cache = graftlens.run_with_cache(m, clean, None, ["resid_pre.2"])
        >>> patch = graftlens.Patch(graftlens.Point("resid_pre", 2), cache["resid_pre.2"], "LT")
        >>> graftlens.patched_logits(m, corrupted, None, [patch], last_only=True).shape
        torch.Size([1, 1, 96])
    """

    point: Point
    value: torch.Tensor  # the activation written at the point (from another run or model): [batch, pos, ...]
    positions: PositionsLike = None
    heads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.value, torch.Tensor) or not (self.value.dtype.is_floating_point or self.value.dtype.is_complex):
            raise PatchError(f"patch of {self.point}: value must be a float tensor, not {type(self.value).__name__}")
        check_finite(f"patch of {self.point}", "value", self.value)

    def as_edit(self, where: torch.Tensor | None) -> Edit:
        """The edit writing this patch at ``where`` (``BoolTensor[batch, pos]``, the resolved positions)."""
        point, value, heads = self.point, self.value, self.heads

        def write(x: torch.Tensor) -> torch.Tensor:
            nonlocal where
            if value.shape != x.shape:
                raise PatchError(f"patch of {point}: the value has shape {list(value.shape)}, the run has {list(x.shape)}")
            where = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if where is None else where.to(x.device)
            where = where.reshape(*where.shape, *([1] * (x.dim() - 2)))  # [batch, pos, 1(, 1)]
            if heads is not None:
                if not point.per_head:
                    raise PatchError(f"patch of {point}: heads are given, but {point.name!r} is not a per-head point")
                bad = [h for h in heads if not 0 <= h < x.shape[2]]
                if bad:
                    raise PatchError(f"patch of {point}: heads {bad} out of range (the point has {x.shape[2]} heads)")
                chosen = torch.zeros(x.shape[2], dtype=torch.bool, device=x.device)
                chosen[list(heads)] = True
                where = where & chosen[:, None]  # [batch, pos, head, 1]
            return torch.where(where, value.to(x.device, x.dtype), x)

        return write


def chained(fns: list[Edit]) -> Edit:
    """One edit applying ``fns`` in turn (several patches of one point)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        for fn in fns:
            x = fn(x)
        return x

    return apply
