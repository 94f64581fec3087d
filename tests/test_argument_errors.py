"""Every value the library cannot compute with is refused: one graftlens error naming the
argument, raised before any forward pass (a hook counts the model's forwards), never a NaN result,
a torch error or a silent other method."""

from __future__ import annotations

import math

import pytest
import torch

import graftlens
from graftlens import DcmSettings, DesideratumBatch, Patch, PathInputs, Point, Receiver
from graftlens.errors import GraftlensError
from graftlens.models import tiny_model
from graftlens.train.tuned_lens import TunedLensSettings

IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
INPUTS = PathInputs(IDS, torch.tensor([[5, 6, 7, 9], [9, 10, 11, 5]]))


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def _z(model) -> torch.Tensor:
    _, cache = graftlens.run_with_cache(model, IDS, None, ["z.1"])
    return cache["z.1"]


def _nan_like(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = math.nan
    return t


def _batch(answers) -> DesideratumBatch:
    return DesideratumBatch(INPUTS, answers)


def _means(model) -> dict:
    return graftlens.head_means(model, [(IDS, None)])


#: (case, a function of the model giving the call to make, the text the error must name). The
#: function may run the model to build the arguments (a capture, head means); only the call counts.
CASES = [
    (
        "path_patching receivers typo",
        lambda m: lambda: graftlens.path_patching(m, INPUTS, IDS[:, 0], receivers="banana"),
        "receivers",
    ),
    (
        "path_patched_logits receivers typo",
        lambda m: lambda: graftlens.path_patched_logits(m, INPUTS, (1, 0), receivers="log"),
        "receivers",
    ),
    (
        "path_patching receivers of other things",
        lambda m: lambda: graftlens.path_patching(m, INPUTS, IDS[:, 0], receivers=[1]),
        "receivers",
    ),
    (
        "edge_patched_logits scale NaN",
        lambda m: lambda: graftlens.edge_patched_logits(m, INPUTS, (1, 0), "logits", scale=math.nan),
        "scale",
    ),
    (
        "edge_patched_logits scale inf",
        lambda m: lambda: graftlens.edge_patched_logits(m, INPUTS, (1, 0), "logits", scale=math.inf),
        "scale",
    ),
    (
        "edge_patched_logits scale text",
        lambda m: lambda: graftlens.edge_patched_logits(m, INPUTS, (1, 0), Receiver("q", 3, 0), scale="1"),
        "scale",
    ),
    ("learn_mask without batches", lambda m: lambda: graftlens.learn_mask(m, [], [(1, 0)]), "batches"),
    (
        "learn_mask answer_ids too short",
        lambda m: lambda: graftlens.learn_mask(m, [_batch(torch.tensor([3]))], [(1, 0)]),
        "answer_ids",
    ),
    (
        "learn_mask answer_ids outside the vocabulary",
        lambda m: lambda: graftlens.learn_mask(m, [_batch(torch.tensor([3, 10**6]))], [(1, 0)]),
        "answer_ids",
    ),
    ("DcmSettings lr inf", lambda m: lambda: DcmSettings(lr=math.inf), "lr"),
    ("DcmSettings lr 0", lambda m: lambda: DcmSettings(lr=0.0), "lr"),
    ("DcmSettings epochs -1", lambda m: lambda: DcmSettings(epochs=-1), "epochs"),
    ("DcmSettings lam NaN", lambda m: lambda: DcmSettings(lam=math.nan), "lam"),
    ("project NaN hidden", lambda m: lambda: graftlens.project(m, torch.full((2, 32), math.nan)), "hidden"),
    ("project float64 hidden", lambda m: lambda: graftlens.project(m, torch.zeros(2, 32, dtype=torch.float64)), "hidden"),
    ("Patch NaN value", lambda m: (lambda z: lambda: Patch(Point("z", 1), z, "LT"))(_nan_like(_z(m))), "value"),
    ("Patch value not a tensor", lambda m: lambda: Patch(Point("z", 1), [1.0], "LT"), "value"),
    (
        "CMAP NaN donor activations",
        lambda m: (lambda z: lambda: graftlens.cross_model_patched_logits(m, {Point("z", 1): z}, IDS, None, {"z.1": None}))(
            _nan_like(_z(m))
        ),
        "value",
    ),
    (
        "mean ablation NaN means",
        lambda m: (
            lambda means: (
                lambda: graftlens.mean_ablated_logits(m, IDS, None, graftlens.Circuit({}), {**means, 2: _nan_like(means[2])})
            )
        )(_means(m)),
        "means[2]",
    ),
    (
        "mean ablation empty means",
        lambda m: lambda: graftlens.mean_ablated_logits(m, IDS, None, graftlens.Circuit({}), {}),
        "means",
    ),
    (
        "mean ablation a layer missing",
        lambda m: (lambda means: lambda: graftlens.mean_ablated_logits(m, IDS, None, graftlens.Circuit({}), {0: means[0]}))(
            _means(m)
        ),
        "means",
    ),
    ("knockout_sweep no windows", lambda m: lambda: graftlens.knockout_sweep(m, IDS, None, [], sources="0"), "windows"),
    ("TunedLensSettings steps -1", lambda m: lambda: TunedLensSettings(steps=-1), "steps"),
    ("TunedLensSettings lr inf", lambda m: lambda: TunedLensSettings(lr=math.inf), "lr"),
    ("point_logits lens by name", lambda m: lambda: graftlens.point_logits(m, IDS, None, ["resid_post.1"], lens="tuned"), "lens"),
    ("open_run(None)", lambda m: lambda: graftlens.open_run(None), "path"),
]


@pytest.mark.parametrize(("case", "make", "named"), CASES, ids=[c[0] for c in CASES])
def test_a_value_that_cannot_be_computed_is_one_error_before_any_forward(model, case, make, named) -> None:
    call = make(model)
    forwards = []
    hook = model.model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        with pytest.raises(GraftlensError) as raised:
            call()
    finally:
        hook.remove()
    message = str(raised.value)
    assert named in message, message
    assert "\n" not in message
    assert not forwards, f"{case}: the model ran {len(forwards)} forward pass(es) before the error"
