"""Metrics as arguments: patching, attribution patching, path patching and edge attribution
measure any function of the last-position logits and the targets; the default is what each
measured before, and the fast sweep equals the one-forward-per-patch loop under every metric."""

from __future__ import annotations

import pytest
import torch

import graftlens
from conftest import make_tiny_model
from graftlens import PathInputs
from graftlens.errors import GraftlensError
from graftlens.interventions import logit_diff, logprob, prob, rank
from graftlens.interventions.patching import activation_patching_loop

CLEAN = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
CORRUPTED = torch.tensor([[5, 13, 7, 8], [9, 14, 11, 12]])
TARGETS = torch.tensor([3, 4])
FOILS = torch.tensor([20, 21])


@pytest.mark.parametrize("metric", [prob, logprob, logit_diff(FOILS), rank], ids=["prob", "logprob", "logit_diff", "rank"])
def test_the_fast_sweep_equals_the_loop_under_every_metric(family, metric) -> None:
    m = make_tiny_model(family, 0)
    fast = graftlens.activation_patching(m, CLEAN, CORRUPTED, TARGETS, "resid_pre", metric=metric)
    slow = activation_patching_loop(m, CLEAN, CORRUPTED, TARGETS, "resid_pre", metric=metric)
    torch.testing.assert_close(fast.scores, slow.scores, atol=1e-4, rtol=1e-4)
    assert fast.clean == pytest.approx(slow.clean, abs=1e-5) and fast.corrupted == pytest.approx(slow.corrupted, abs=1e-5)


def test_the_metric_is_measured_as_defined() -> None:
    m = make_tiny_model("llama", 0)
    clean_logits = graftlens.run_logits(m, CLEAN, last_only=True)[:, -1]
    sweep = graftlens.activation_patching(m, CLEAN, CORRUPTED, TARGETS, metric=logit_diff(FOILS))
    manual = (clean_logits[[0, 1], TARGETS] - clean_logits[[0, 1], FOILS]).mean()
    assert sweep.clean == pytest.approx(float(manual), abs=1e-5)
    default = graftlens.activation_patching(m, CLEAN, CORRUPTED, TARGETS)
    assert default.clean == pytest.approx(float(clean_logits.softmax(-1)[[0, 1], TARGETS].mean()), abs=1e-6)
    ranked = graftlens.activation_patching(m, CLEAN, CORRUPTED, TARGETS, metric=rank)
    assert ranked.clean == float((clean_logits > clean_logits[[0, 1], TARGETS][:, None]).sum(-1).float().add(1).mean())


def test_attribution_patching_takes_a_differentiable_metric() -> None:
    m = make_tiny_model("llama", 0)
    first = graftlens.attribution_patching(m, CLEAN, CORRUPTED, TARGETS, metric=logprob)
    exact = graftlens.activation_patching(m, CLEAN, CORRUPTED, TARGETS, metric=logprob)
    assert first.corrupted == pytest.approx(exact.corrupted, abs=1e-5) and first.clean == pytest.approx(exact.clean, abs=1e-5)
    with pytest.raises(GraftlensError, match="no gradient"):
        graftlens.attribution_patching(m, CLEAN, CORRUPTED, TARGETS, metric=rank)
    with pytest.raises(GraftlensError, match="one value per prompt"):
        graftlens.activation_patching(m, CLEAN, CORRUPTED, TARGETS, metric=lambda logits, targets: logits.sum())


def test_path_patching_scores_the_relative_change_of_the_metric() -> None:
    m = make_tiny_model("llama", 0)
    inputs = PathInputs(CLEAN, CORRUPTED)
    scores = graftlens.path_patching(m, inputs, TARGETS, metric=logprob)
    clean = logprob(graftlens.path_patched_logits(m, inputs, None), TARGETS)
    patched = logprob(graftlens.path_patched_logits(m, inputs, (2, 1)), TARGETS)
    assert float(scores.scores[2, 1]) == pytest.approx(float(((patched - clean) / clean.abs()).mean()), abs=1e-5)
    default = graftlens.path_patching(m, inputs, TARGETS)
    by_prob = graftlens.path_patching(m, inputs, TARGETS, metric=prob)
    torch.testing.assert_close(default.scores, by_prob.scores)


def test_edge_attribution_takes_a_metric() -> None:
    m = make_tiny_model("gpt2", 0)
    inputs = PathInputs(CLEAN, CORRUPTED)
    default = graftlens.edge_attribution(m, inputs, TARGETS)
    torch.testing.assert_close(default.scores, graftlens.edge_attribution(m, inputs, TARGETS, metric=logprob).scores)
    diff = graftlens.edge_attribution(m, inputs, TARGETS, metric=logit_diff(FOILS))
    assert not torch.allclose(diff.scores, default.scores) and bool(torch.isfinite(diff.scores).all())
    with pytest.raises(GraftlensError, match="no gradient"):
        graftlens.edge_attribution(m, inputs, TARGETS, metric=rank)
