"""Which lens reads the stream: the logit lens (the model's own final norm and unembedding) or a
tuned lens (Belrose et al. 2023: a trained affine translator per depth first,
`graftlens.interventions.tuned_lens`). Methods that project the stream take ``lens:``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from graftlens.methods.core import resources
from graftlens.methods.core.parts import Strict

if TYPE_CHECKING:
    import torch

    from graftlens.interventions.tuned_lens import TunedLens
    from graftlens.methods.core.execution import Execution

LensName = Literal["logit", "tuned"]


class LensChoice(Strict):
    """``lens: logit`` (the default) or ``lens: tuned``: the model's tuned lens, trained once on
    its own samples and cached (`graftlens.train.tuned_lens.tuned_lens`)."""

    added: ClassVar[dict[str, Any]] = {"lens": "logit"}

    lens: LensName = "logit"
    """`logit` (final norm and unembedding) or `tuned` (the model's tuned lens first)"""


def lens_of(execution: Execution, model: str, lens: LensName) -> TunedLens | None:
    """The tuned lens of ``model`` for ``lens: tuned`` (loaded once per run), None for the logit lens."""
    if lens == "logit":
        return None
    from graftlens.train.tuned_lens import tuned_lens

    return execution.state(resources.TunedLensOf(model), lambda: tuned_lens(execution.models[model]))


def read_through(model, hidden: torch.Tensor, point: str, lens: TunedLens | None) -> torch.Tensor:
    """Logits of ``hidden[..., d_model]`` read at ``point``: translated by ``lens`` (if any),
    then the final norm and the unembedding."""
    from graftlens.interventions.lens import project

    return project(model, hidden if lens is None else lens.translate(hidden, point))
