"""Grafting tokens after the prompt: generation, teacher-forced targets, and the ``new`` selector.

The literal reference judges every token after a prompt (its ``LT`` span) as the last token of
the sequence so far, as a loop generating it would; the engine must agree, whether the new tokens
come one per call from a KV cache (generation) or all in one pass (a teacher-forced target)."""

from __future__ import annotations

import pytest
import torch

from conftest import VOCAB, make_tiny_model
from graftlens import Graft, grafted_forward, grafted_generate, grafting
from graftlens.data.prompts import TokenizedPrompt
from graftlens.eval.batching import collate, with_targets
from graftlens.eval.scoring import target_logprob
from graftlens.graft.reference import reference_forward, reference_generate
from graftlens.graft.rules import compile_rules
from graftlens.models import adapter_for
from graftlens.models.generate import greedy_continuation
from graftlens.models.run import position_ids_for
from graftlens.positions import PositionError, parse_positions, resolve_positions

RULE_SETS = {
    "LT": [Graft("ft", "all", "all", "LT")],
    "FE+LT": [Graft("ft", "attn", "all", "FE+LT"), Graft("ft", "mlp", [1, 3], "LT")],
    "new": [Graft("ft", "o+mlp+lm_head", "all", "new")],
    "LT^C": [Graft("ft", "q+k+v+ln_attn", [0, 2], "LT^C")],
    "FE^C, last wins": [Graft("ft", "all", "all", "FE^C"), Graft("base", "mlp", [2], "-1")],
}


def prompts(seed: int = 3, lengths=(5, 7, 3, 6), target_lengths=(1, 3, 2, 3)) -> list[TokenizedPrompt]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (n, t) in enumerate(zip(lengths, target_lengths)):
        ids = tuple(torch.randint(3, VOCAB, (n,), generator=g).tolist())
        target = tuple(torch.randint(3, VOCAB, (t,), generator=g).tolist())
        out.append(TokenizedPrompt(f"p{i}", "", " x", ids, target, {"FE": (0, 2), "LT": (n - 1, n)}))
    return out


def donors(family: str) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    base = make_tiny_model(family, 0)
    return base, {"ft": make_tiny_model(family, 1), "base": base}


@pytest.mark.parametrize("name", list(RULE_SETS))
def test_a_teacher_forced_target_equals_the_token_by_token_reference(family: str, name: str) -> None:
    """Prompt and target in one grafted pass: every logit equals the literal definition, which
    grafts each target token as the last token of its own step."""
    base, models = donors(family)
    batch = collate(prompts(), pad_id=0)
    forced = with_targets(batch)
    spans = batch.spans
    rules = RULE_SETS[name]
    got = grafted_forward(base, models, rules, forced.input_ids, forced.attention_mask, spans)
    want = reference_forward(base, models, forced.input_ids, forced.attention_mask, rules, spans)
    real = forced.attention_mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)


def test_one_forced_pass_equals_the_target_fed_one_token_per_call(family: str) -> None:
    """The new tokens' owners do not depend on how many of them one call computes."""
    from transformers import DynamicCache

    base, models = donors(family)
    batch = collate(prompts(target_lengths=(3, 3, 3, 3)), pad_id=0)  # no right padding: one column per step
    forced = with_targets(batch)
    rules = RULE_SETS["FE+LT"]
    full = grafted_forward(base, models, rules, forced.input_ids, forced.attention_mask, batch.spans)
    width = batch.input_ids.shape[1]
    cache = DynamicCache(config=base.config)
    positions = position_ids_for(forced.attention_mask)
    steps = []
    with torch.no_grad(), grafting(base, models, rules, batch.spans):
        for stop in range(width, forced.input_ids.shape[1] + 1):
            start = 0 if stop == width else stop - 1
            out = base(
                input_ids=forced.input_ids[:, start:stop],
                attention_mask=forced.attention_mask[:, :stop],
                position_ids=positions[:, start:stop],
                past_key_values=cache,
                use_cache=True,
            )
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, width - 1 :], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["LT", "new", "LT^C"])
def test_grafted_generation_equals_the_reference(family: str, name: str) -> None:
    base, models = donors(family)
    batch = collate(prompts(), pad_id=0)
    rules = RULE_SETS[name]
    got = grafted_generate(base, models, rules, batch.input_ids, batch.attention_mask, batch.spans, 4)
    want = reference_generate(base, models, batch.input_ids, batch.attention_mask, rules, batch.spans, 4)
    assert got.shape == (4, 4)
    assert torch.equal(got, want)


def test_generation_identities(family: str) -> None:
    """Grafting nothing generates what the base says; grafting everything everywhere (new tokens
    included), what the donor says."""
    base, models = donors(family)
    batch = collate(prompts(), pad_id=0)
    args = (batch.input_ids, batch.attention_mask)
    plain = greedy_continuation(base, *args, 5)
    assert torch.equal(grafted_generate(base, models, [], *args, batch.spans, 5), plain)
    assert torch.equal(
        grafted_generate(base, models, [Graft("ft", "all", "all", "all")], *args, batch.spans, 5),
        greedy_continuation(models["ft"], *args, 5),
    )
    # The greedy loop is the argmax of full passes over its own output.
    ids, mask = args
    for step in range(5):
        with torch.no_grad():
            logits = base(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask)).logits[:, -1]
        assert torch.equal(logits.argmax(-1), plain[:, step])
        ids, mask = torch.cat([ids, plain[:, step : step + 1]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)


def test_lt_follows_each_new_token_and_new_picks_only_them() -> None:
    """The owners the rules compile to on a forced batch: the prompt as the prompt alone would have
    it, then LT and ``new`` on every target token, FE and LT^C on none."""
    model = make_tiny_model("llama")
    adapter = adapter_for(model)
    batch = collate(prompts(), pad_id=0)
    forced = with_targets(batch)
    width = batch.input_ids.shape[1]
    after = forced.attention_mask.bool().clone()
    after[:, :width] = False  # the real target columns
    prompt_cols = torch.zeros_like(after)
    prompt_cols[:, :width] = batch.attention_mask.bool()
    for text, on_new in [("LT", True), ("new", True), ("FE", False), ("LT^C", False), ("FE+LT", True), ("all", True)]:
        plans = compile_rules(adapter, [Graft("ft", "mlp", [0], text)], ["ft"], forced.attention_mask, batch.spans)
        owners = next(iter(plans.values())).owners[0].bool()  # [batch, pos]
        alone = resolve_positions(text, batch.attention_mask, batch.spans)  # the prompt by itself
        assert torch.equal(owners[:, :width], alone if text != "new" else torch.zeros_like(alone)), text
        assert bool(owners[after].all()) == on_new and bool(owners[after].any()) == on_new, text
        assert not bool(owners[~forced.attention_mask.bool()].any())  # padding is nobody's


def test_target_logprob_is_the_sum_over_the_target_tokens() -> None:
    base = make_tiny_model("gpt2")
    batch = collate(prompts(), pad_id=0)
    forced = with_targets(batch)
    with torch.no_grad():
        logits = base(
            input_ids=forced.input_ids, attention_mask=forced.attention_mask, position_ids=position_ids_for(forced.attention_mask)
        ).logits
    got = target_logprob(logits[:, -forced.n_target :], forced)
    for i, p in enumerate(batch.prompts):  # each prompt alone, token by token
        ids = list(p.input_ids)
        total = 0.0
        for t in p.target_ids:
            with torch.no_grad():
                step = base(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
            total += float(step[t])
            ids.append(t)
        assert abs(float(got[i]) - total) < 1e-4
    # The first target token's log-probability is the last prompt column's, as next-token metrics read it.
    first = logits[:, batch.input_ids.shape[1] - 1].log_softmax(-1).gather(1, batch.target_ids[:, None])[:, 0]
    one_token = torch.tensor([len(p.target_ids) == 1 for p in batch.prompts])
    torch.testing.assert_close(got[one_token], first[one_token])


def test_new_needs_the_prompt_end() -> None:
    mask = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(PositionError, match="LT span"):
        resolve_positions(parse_positions("new"), mask, [{"FE": (0, 1)}])
    assert str(parse_positions("FE+new")) == "FE+new"
    base, models = donors("llama")
    with pytest.raises(Exception, match="LT span"):
        grafted_generate(base, models, [], mask, mask, [{"FE": (0, 1)}], 2)
