"""Computing only what an intervention can change: a kept run continued from (layer, column)
equals the full pass, and every fast sweep equals the straightforward loop, on every family's
tiny model (left-padded rows, prompts of different lengths) and on the embedded model."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from graftlens.interventions import attention_knockout, capture
from graftlens.interventions.continuation import CachedRun
from graftlens.interventions.patching import (
    Patch,
    activation_patching,
    activation_patching_loop,
    cross_model_patched_logits,
    run_with_cache,
)
from graftlens.interventions.points import parse_point
from graftlens.models.loading import as_loaded
from graftlens.models.run import run_logits

SEQ = 7
SPANS = [{"subject": (1, 3)}, {"subject": (0, 2)}, {"subject": (2, 4)}]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 7, 5 and 6 tokens, left-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (3, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :1] = 0
    return ids, mask


def test_a_kept_run_continued_from_anywhere_is_the_full_pass(family: str) -> None:
    model = as_loaded(make_tiny_model(family))
    ids, mask = _batch()
    full = run_logits(model, ids, mask, last_only=True)[:, -1]
    layers_before = list(model.model.get_submodule(model.adapter.family.layers))
    run = CachedRun(model, ids, mask)
    torch.testing.assert_close(run.logits, full, atol=0, rtol=0)
    for layer in range(4):
        for column in range(SEQ):
            torch.testing.assert_close(run.continued(layer, column), full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run.continued(layer, 3, repeat=2), full.repeat_interleave(2, 0), atol=1e-5, rtol=1e-5)
    assert list(model.model.get_submodule(model.adapter.family.layers)) == layers_before  # every layer put back
    assert torch.equal(run_logits(model, ids, mask, last_only=True)[:, -1], full)
    with pytest.raises(ValueError, match="cannot continue from layer 4"):
        run.continued(4, 0)


@pytest.mark.parametrize(
    "point, by",
    [
        ("resid_pre", "position"),
        ("resid_post", "position"),
        ("attn_out", "position"),
        ("mlp_out", "position"),
        ("k", "position"),
        ("z", "head"),
        ("q", "head"),
        ("v", "head"),
        ("z", "position_head"),
        ("k", "position_head"),
    ],
)
def test_fast_activation_patching_is_the_loop(family: str, point: str, by: str, monkeypatch) -> None:
    model = as_loaded(make_tiny_model(family))
    clean, mask = _batch()
    corrupted = clean.clone()
    corrupted[:, 3] = (clean[:, 3] + 7) % 90 + 3
    targets = torch.tensor([5, 9, 11])
    # A small pass forces the heads of a layer into several chunks of variants.
    monkeypatch.setattr("graftlens.interventions.patching.TOKENS_PER_PASS", 3 * SEQ * 3)
    fast = activation_patching(model, clean, corrupted, targets, point, mask, by=by)
    loop = activation_patching_loop(model, clean, corrupted, targets, point, mask, by=by)
    torch.testing.assert_close(fast.scores, loop.scores, atol=1e-7, rtol=1e-5)
    assert fast.corrupted == pytest.approx(loop.corrupted, abs=1e-7) and fast.clean == pytest.approx(loop.clean, abs=1e-7)
    assert float(fast.scores.max() - fast.scores.min()) > 1e-6  # the patches move the metric, beyond atol


def test_patching_a_run_into_itself_changes_nothing() -> None:
    model = as_loaded(make_tiny_model("llama"))
    ids, mask = _batch()
    targets = torch.tensor([5, 9, 11])
    for point, by in (("resid_pre", "position"), ("z", "head"), ("q", "position_head")):
        sweep = activation_patching(model, ids, ids, targets, point, mask, by=by)
        torch.testing.assert_close(sweep.scores, torch.full_like(sweep.scores, sweep.corrupted), atol=1e-6, rtol=0)


def test_fast_knockout_is_the_full_knockout(family: str) -> None:
    model = as_loaded(make_tiny_model(family))
    ids, mask = _batch()
    run = CachedRun(model, ids, mask)
    for layers in ([0], [1, 2], [3], [0, 1, 2, 3]):
        for sources, targets in (("subject", "LT"), ("(subject+LT)^C", "LT"), ("LT", "LT"), ("0", "subject")):
            with attention_knockout(model, layers, sources=sources, targets=targets, spans=SPANS):
                full = run_logits(model, ids, mask, last_only=True)[:, -1]
            torch.testing.assert_close(run.knocked_out(layers, sources, targets, spans=SPANS), full, atol=1e-5, rtol=1e-5)
    assert torch.equal(run.knocked_out([1], "all^C", "LT", spans=SPANS), run.logits)  # nothing blocked: bit for bit


def test_fast_cross_model_patching_is_the_full_pass(family: str) -> None:
    base, donor = as_loaded(make_tiny_model(family)), as_loaded(make_tiny_model(family, seed=1))
    ids, mask = _batch()
    run = CachedRun(base, ids, mask)
    cases = (
        (["z.2", "z.3"], [0, 2], "LT"),
        (["resid_pre.1"], None, "subject"),
        (["v.0", "q.3"], None, None),
        (["mlp_out.2"], None, "subject+LT"),
    )
    for points, heads, positions in cases:
        _, cache = run_with_cache(donor, ids, mask, points)
        per_point = {p: heads if parse_point(p).per_head else None for p in points}
        full = cross_model_patched_logits(base, cache, ids, mask, per_point, positions, spans=SPANS, last_only=True)[:, -1]
        patches = [
            Patch(parse_point(p), cache[p], positions, None if per_point[p] is None else tuple(per_point[p])) for p in points
        ]
        torch.testing.assert_close(run.patched(patches, SPANS), full, atol=1e-5, rtol=1e-5)


def test_hooks_inside_a_continuation_see_only_the_continued_columns() -> None:
    model = as_loaded(make_tiny_model("llama"))
    ids, mask = _batch()
    run = CachedRun(model, ids, mask)
    with capture(model, ["resid_pre.0", "resid_pre.2", "mlp_out.3"]) as cache:
        run.continued(2, 4)
    assert "resid_pre.0" not in cache  # layers below the start are not run
    assert cache["resid_pre.2"].shape[1] == SEQ - 4 and cache["mlp_out.3"].shape[1] == SEQ - 4
    torch.testing.assert_close(cache["resid_pre.2"], run.streams[2][:, 4:])


def test_fast_patching_on_the_embedded_model_is_the_loop(embedded) -> None:
    tok = embedded.tokenizer
    clean = tok(["The capital of France is", "The capital of Spain is"], return_tensors="pt").input_ids
    corrupted = tok(["The capital of Japan is", "The capital of Italy is"], return_tensors="pt").input_ids
    assert clean.shape == corrupted.shape
    targets = torch.tensor([tok(" Paris").input_ids[0], tok(" Madrid").input_ids[0]])
    for point, by, layers in (("resid_pre", "position", [0, 11, 29]), ("z", "head", [20, 29])):
        fast = activation_patching(embedded, clean, corrupted, targets, point, layers=layers, by=by)
        loop = activation_patching_loop(embedded, clean, corrupted, targets, point, layers=layers, by=by)
        torch.testing.assert_close(fast.scores, loop.scores, atol=1e-5, rtol=0)


def test_attribution_patching_is_the_first_order_term_of_exact_patching(family: str) -> None:
    """Scaling a patch down by ε makes exact patching linear: (exact − corrupted) / ε → the estimate."""
    from graftlens.interventions.patching import attribution_patching, patched_logits

    model = as_loaded(make_tiny_model(family).double())  # float64: the finite difference is far above rounding
    clean, _ = _batch()
    mask = torch.ones_like(clean)  # no padding: Gemma-2 in float64 gives NaN on left-padded rows, patched or not
    corrupted = clean.clone()
    corrupted[:, 3] = (clean[:, 3] + 7) % 90 + 3
    targets = torch.tensor([5, 9, 11])
    eps = 1e-2
    for point_name, by, column in (("resid_pre", "position", 4), ("z", "head", 1)):
        approx = attribution_patching(model, clean, corrupted, targets, point_name, mask, by=by)
        assert torch.equal(
            approx.scores, activation_patching(model, clean, corrupted, targets, point_name, mask, by=by, approx=True).scores
        )
        point = parse_point(f"{point_name}.2")
        _, clean_cache = run_with_cache(model, clean, mask, [point])
        _, own = run_with_cache(model, corrupted, mask, [point])
        nudged = own[point] + eps * (clean_cache[point] - own[point])
        if by == "head":
            patch = Patch(point, nudged, None, (column,))
        else:
            where = torch.zeros_like(mask, dtype=torch.bool)
            where[:, column] = True
            patch = Patch(point, nudged, where)
        logits = patched_logits(model, corrupted, mask, [patch], last_only=True)
        exact = float(logits[:, -1].softmax(-1).gather(1, targets[:, None]).mean())
        unpatched = run_logits(model, corrupted, mask, last_only=True)[:, -1].softmax(-1).gather(1, targets[:, None])
        slope = (exact - float(unpatched.mean())) / eps
        estimate = float(approx.scores[2, column]) - approx.corrupted
        assert abs(estimate) > 1e-7
        assert slope == pytest.approx(estimate, rel=5e-2)  # some families keep float32 inside (rotary): a few % of noise
    itself = attribution_patching(model, clean, clean, targets, "resid_pre", mask)
    assert torch.equal(itself.scores, torch.full_like(itself.scores, itself.corrupted))  # no difference, no change
