"""Scoring: ranks and probabilities against brute force; batching and grafting identities."""

from __future__ import annotations

import torch

from conftest import make_text_model
from graftlens.data.dataset import tokenize_test
from graftlens.eval import evaluate, pad_id_of, score_logits, target_logprob
from graftlens.eval.batching import batches
from graftlens.graft import Graft
from graftlens.methods.core.grafting import grafted_last_logits
from graftlens.models.loading import as_loaded


def test_rank_and_probability_match_brute_force(small_facts, text_tokenizer):
    prompts = tokenize_test(small_facts.test[:5], text_tokenizer)
    logits = torch.randn(5, len(text_tokenizer))
    for p, s, row in zip(prompts, score_logits(logits, prompts), logits):
        order = row.argsort(descending=True).tolist()
        assert s.target_rank == order.index(p.target_id) + 1
        assert abs(s.target_prob - row.softmax(-1)[p.target_id].item()) < 1e-6
        assert s.top_token_ids[0] == order[0]


def test_batched_scores_equal_one_prompt_at_a_time(small_facts, text_tokenizer):
    model = make_text_model("llama", text_tokenizer)
    prompts = tokenize_test(small_facts.test, text_tokenizer)
    pad = pad_id_of(text_tokenizer)
    batched = evaluate(model, prompts, pad, batch_size=7)
    alone = [evaluate(model, [p], pad)[0] for p in prompts]
    assert [s.id for s in batched] == [p.id for p in prompts]
    for a, b in zip(batched, alone):
        assert a.target_rank == b.target_rank and abs(a.target_prob - b.target_prob) < 1e-5


def test_grafted_scoring_identities(small_facts, text_tokenizer):
    base = as_loaded(make_text_model("llama", text_tokenizer, seed=0), text_tokenizer)
    donor = make_text_model("llama", text_tokenizer, seed=1)
    prompts = tokenize_test(small_facts.test, text_tokenizer)
    pad = pad_id_of(text_tokenizer)
    plain, tuned = evaluate(base.model, prompts, pad), evaluate(donor, prompts, pad)
    nothing = evaluate(grafted_last_logits(base, {"d": donor}, []), prompts, pad, batch_size=5)
    everything = evaluate(grafted_last_logits(base, {"d": donor}, [Graft("d", "all", "all", "all")]), prompts, pad, batch_size=5)
    fe_lt = evaluate(grafted_last_logits(base, {"d": donor}, [Graft("d", "all", "all", "FE+LT")]), prompts, pad, batch_size=5)
    # The plain path applies the unembedding to the last position only (logits_to_keep=1), a
    # matrix product of another shape, so agreement is to float rounding, not bit for bit.
    for a, b in zip(nothing, plain):
        assert abs(a.target_prob - b.target_prob) < 1e-7
    for a, b in zip(everything, tuned):
        assert abs(a.target_prob - b.target_prob) < 1e-5
    assert [s.target_prob for s in fe_lt] != [s.target_prob for s in plain]


def test_grafted_scoring_of_the_last_position_only_equals_the_full_forward(small_facts, text_tokenizer):
    """Scoring applies lm_head to the last position only, grafted or not; with a forced target, the
    target's columns are scored too, and equal those of a full grafted pass over prompt and target."""
    from graftlens.eval.batching import with_targets
    from graftlens.graft import grafted_forward

    base = as_loaded(make_text_model("llama", text_tokenizer, seed=0), text_tokenizer)
    donor = make_text_model("llama", text_tokenizer, seed=1)
    prompts = tokenize_test(small_facts.test, text_tokenizer)
    batch = next(batches(prompts, 6, pad_id_of(text_tokenizer)))
    for rules in (
        [Graft("d", "o+mlp", "half2", "LT"), Graft("d", "ln_final", positions="FE+LT")],
        [Graft("d", "lm_head", positions="LT")],
    ):
        fast = grafted_last_logits(base, {"d": donor}, rules)(batch).logits  # [batch, vocab]
        full = grafted_forward(base, {"d": donor}, rules, batch.input_ids, batch.attention_mask, spans=batch.spans)[:, -1]
        assert torch.allclose(fast, full, atol=1e-5), (rules, (fast - full).abs().max())
        forced = with_targets(batch)
        assert forced.n_target > 1  # some target has more than one token
        with_target = grafted_last_logits(base, {"d": donor}, rules, target_logprob=True)(batch)
        assert torch.equal(with_target.logits, fast)  # what follows the prompt does not change its scores
        every = grafted_forward(base, {"d": donor}, rules, forced.input_ids, forced.attention_mask, spans=batch.spans)
        want = target_logprob(every[:, -forced.n_target :], forced)
        assert torch.allclose(with_target.target_logprob, want, atol=1e-4), (rules, with_target.target_logprob - want)
