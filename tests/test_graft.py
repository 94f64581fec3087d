"""The grafting engine against its literal reference, its identities, and its errors."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import pytest
import torch

from conftest import VOCAB, make_tiny_model
from graftlens import Graft, grafted_forward, grafted_generate, grafting
from graftlens.errors import LayerSelectionError, UnknownComponentError
from graftlens.graft import DonorError, GraftRuleError
from graftlens.graft.reference import reference_forward
from graftlens.models import adapter_for, position_ids_for
from graftlens.positions import PositionError

COMPONENT_CHOICES = [
    "q",
    "k",
    "v",
    "o",
    "gate",
    "up",
    "down",
    "ln_attn",
    "ln_mlp",
    "embed",
    "lm_head",
    "ln_final",
    "attn",
    "mlp",
    "o+mlp",
]


def batch(seed: int, b: int = 3, t: int = 7, left_pad: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :left_pad] = 0  # example 0 is left padded
    ids[0, :left_pad] = 1
    return ids, mask


def random_rules(family: str, rng: random.Random, b: int, t: int) -> list[Graft]:
    gated = adapter_for(make_tiny_model(family)).gated_mlp
    choices = [c for c in COMPONENT_CHOICES if gated or c != "gate"]
    rules = []
    for _ in range(rng.randint(1, 3)):
        comps = "+".join(rng.sample(choices, rng.randint(1, 3)))
        layers = sorted(rng.sample(range(4), rng.randint(1, 4)))
        positions = torch.rand(b, t, generator=torch.Generator().manual_seed(rng.randint(0, 10**6))) < 0.4
        rules.append(Graft(rng.choice(["a", "b"]), comps, layers, positions))
    return rules


@contextlib.contextmanager
def forward_hook(module: torch.nn.Module, hook) -> Iterator[None]:
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def base_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask)).logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_equals_reference_on_random_rules(family: str, seed: int) -> None:
    base, a, b = make_tiny_model(family, 0), make_tiny_model(family, 1), make_tiny_model(family, 2)
    ids, mask = batch(seed)
    rules = random_rules(family, random.Random(f"{family}-{seed}"), *ids.shape)
    donors = {"a": a, "b": b}
    got = grafted_forward(base, donors, rules, ids, mask)
    want = reference_forward(base, donors, ids, mask, rules)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
    assert (got[real] - base_logits(base, ids, mask)[real]).abs().max() > 1e-3  # the rules did something


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt_neox"])
def test_chunked_wide_outputs_equal_reference(family: str, monkeypatch) -> None:
    """Wide outputs (the unembedding) are computed in chunks of columns; forced onto every unfused
    linear module here (with and without bias), in chunks of 7 columns (the last one partial),
    it must still equal the reference."""
    from graftlens.graft import grafted

    monkeypatch.setattr(grafted, "WIDE_OUTPUT", 0)
    monkeypatch.setattr(grafted, "CHUNK_BYTES", 1)
    monkeypatch.setattr(grafted, "MIN_CHUNK_COLUMNS", 7)
    base, a, b = make_tiny_model(family, 0), make_tiny_model(family, 1), make_tiny_model(family, 2)
    for seed in range(3):
        ids, mask = batch(7 + seed, b=3 + seed, t=7 - seed)
        rules = random_rules(family, random.Random(f"wide-{family}-{seed}"), *ids.shape)
        got = grafted_forward(base, {"a": a, "b": b}, rules, ids, mask)
        want = reference_forward(base, {"a": a, "b": b}, ids, mask, rules)
        real = mask.bool()
        assert (got[real] - want[real]).abs().max() < 1e-4


def test_linear_fast_paths_step_aside_for_autograd(monkeypatch) -> None:
    """Linear modules (the wide unembedding among them) write each group's product in place
    with ``out=``, which autograd refuses; with ``grad`` the engine computes them through the
    modules' own forwards instead: the logits keep their graph and equal the no-grad ones."""
    from graftlens.graft import grafted

    monkeypatch.setattr(grafted, "WIDE_OUTPUT", 0)  # every unfused linear counts as wide
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask = batch(15)
    rules = [Graft("ft", "all", "all", "LT")]
    with_grad = grafted_forward(base, {"ft": donor}, rules, ids, mask, grad=True)
    assert with_grad.requires_grad
    (gradient,) = torch.autograd.grad(with_grad.sum(), base.lm_head.weight)
    assert gradient.abs().sum() > 0
    torch.testing.assert_close(with_grad.detach(), grafted_forward(base, {"ft": donor}, rules, ids, mask), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_mlp_is_grafted_as_one_block(family: str, monkeypatch) -> None:
    """The MLP runs once per owner group (gate/up/down each with that group's owners), and
    equals the reference when gate, up and down have different owners."""
    from graftlens.graft.grafted import GraftedBlock

    runs: list[tuple[int, ...]] = []
    original = GraftedBlock._run
    monkeypatch.setattr(GraftedBlock, "_run", lambda self, owners, x: runs.append(owners) or original(self, owners, x))
    base, a, b = make_tiny_model(family, 0), make_tiny_model(family, 1), make_tiny_model(family, 2)
    ids, mask = batch(11)
    first = "gate" if adapter_for(base).gated_mlp else "up"
    rules = [Graft("a", "mlp", "all", "FE"), Graft("b", first, [1, 2], "LT"), Graft("b", "down", 2, "0")]
    spans = [{"FE": (1, 3)}, {"FE": (0, 2)}, {"FE": (4, 6)}]
    got = grafted_forward(base, {"a": a, "b": b}, rules, ids, mask, spans=spans)
    want = reference_forward(base, {"a": a, "b": b}, ids, mask, rules, spans=spans)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
    assert len(runs) > 4 * 2 and any(len(set(o)) > 1 for o in runs)  # every layer, mixed owners in some group


def test_mlp_block_falls_back_when_a_member_has_hooks() -> None:
    """A hook inside the MLP must see the whole [batch, pos, ...] tensor, so the block steps aside."""
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask = batch(12)
    rules = [Graft("ft", "mlp", "all", "0,-1")]
    seen: list[tuple[int, ...]] = []
    with forward_hook(base.model.layers[1].mlp.down_proj, lambda m, i, o: seen.append(tuple(o.shape))):
        got = grafted_forward(base, {"ft": donor}, rules, ids, mask)
    want = reference_forward(base, {"ft": donor}, ids, mask, rules)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
    assert seen == [(*ids.shape, base.config.hidden_size)]


@pytest.mark.parametrize("where", ["norm output", "between q and k"])
def test_a_norm_output_changed_in_place_is_read_again(where: str) -> None:
    """q, k and v share one gather of the norm's output only while it is unchanged: a hook that
    edits it in place (after the norm, or after q has gathered it) must reach the projections
    exactly as in the reference."""
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask = batch(13)
    rules = [Graft("ft", "all", "all", "0,-1")]
    layer = base.model.layers[2]
    if where == "norm output":
        edit = forward_hook(layer.input_layernorm, lambda m, i, o: o.mul_(3.0))
    else:  # q has gathered the rows already; k must not reuse them

        def triple(module: torch.nn.Module, args: tuple) -> None:
            args[0].mul_(3.0)

        edit = layer.self_attn.k_proj.register_forward_pre_hook(triple)  # removed on leaving ``with``
    with edit:
        got = grafted_forward(base, {"ft": donor}, rules, ids, mask)
        want = reference_forward(base, {"ft": donor}, ids, mask, rules)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
    assert (got[real] - grafted_forward(base, {"ft": donor}, rules, ids, mask)[real]).abs().max() > 1e-3


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_single_fused_part_equals_reference(component: str) -> None:
    for family in ("gpt2", "gpt_neox", "phi3"):
        base, donor = make_tiny_model(family, 0), make_tiny_model(family, 1)
        ids, mask = batch(5)
        rules = [Graft("ft", component, "all", "0,-1")]
        got = grafted_forward(base, {"ft": donor}, rules, ids, mask)
        want = reference_forward(base, {"ft": donor}, ids, mask, rules)
        real = mask.bool()
        assert (got[real] - want[real]).abs().max() < 1e-4, family
        assert (got[real] - base_logits(base, ids, mask)[real]).abs().max() > 1e-4, family


def test_overlapping_rules_later_wins() -> None:
    base, a, b = (make_tiny_model("gpt_neox", s) for s in range(3))
    ids, mask = batch(3)
    rules = [Graft("a", "all", "all", None), Graft("b", "attn", "half2", "LT"), Graft("a", "q", "3", "LT")]
    got = grafted_forward(base, {"a": a, "b": b}, rules, ids, mask)
    want = reference_forward(base, {"a": a, "b": b}, ids, mask, rules)
    assert (got[mask.bool()] - want[mask.bool()]).abs().max() < 1e-4


def test_no_rules_is_the_base_bit_for_bit(family: str) -> None:
    base, donor = make_tiny_model(family, 0), make_tiny_model(family, 1)
    ids, mask = batch(4)
    assert torch.equal(grafted_forward(base, {"ft": donor}, [], ids, mask), base_logits(base, ids, mask))


def test_rules_claiming_no_position_are_the_base_bit_for_bit() -> None:
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask = batch(4)
    none = torch.zeros_like(mask, dtype=torch.bool)
    got = grafted_forward(base, {"ft": donor}, [Graft("ft", "all", "all", none)], ids, mask)
    assert torch.equal(got, base_logits(base, ids, mask))


def test_everything_everywhere_is_the_donor(family: str) -> None:
    base, donor = make_tiny_model(family, 0), make_tiny_model(family, 1)
    ids, mask = batch(6)
    got = grafted_forward(base, {"ft": donor}, [Graft("ft", "all", "all", None)], ids, mask)
    real = mask.bool()
    assert (got[real] - base_logits(donor, ids, mask)[real]).abs().max() < 1e-5


def test_results_do_not_depend_on_batch_or_padding_side() -> None:
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    rules = [Graft("ft", "o+mlp", "half2", "1+LT")]
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in (4, 7, 5)]

    def padded(side: str) -> tuple[torch.Tensor, torch.Tensor]:
        t = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), t), 1)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            sl = slice(t - len(p), t) if side == "left" else slice(0, len(p))
            ids[i, sl], mask[i, sl] = p, 1
        return ids, mask

    alone = [grafted_forward(base, {"ft": donor}, rules, p[None], None)[0, -1] for p in prompts]
    for side in ("left", "right"):
        ids, mask = padded(side)
        logits = grafted_forward(base, {"ft": donor}, rules, ids, mask)
        last = mask.sum(-1) - 1 if side == "right" else torch.full((3,), ids.shape[1] - 1)
        for i in range(3):
            assert (logits[i, last[i]] - alone[i]).abs().max() < 1e-5, (side, i)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_padded_rows_are_left_uncomputed(family: str) -> None:
    """Grafted modules skip padded positions (their rows are zero; no real position reads them),
    real positions still equal the reference, and a row of padding only is harmless."""
    base, donor = make_tiny_model(family, 0), make_tiny_model(family, 1)
    ids, mask = batch(14, b=4)
    mask[1, 3:] = 0  # right padding
    mask[3] = 0  # nothing but padding
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(14)) < 0.5  # padded ones too
    rules = [Graft("ft", "all", "all", chosen)]
    site = adapter_for(base).sites("o", 1)[0].path
    outputs: list[torch.Tensor] = []
    with forward_hook(base.get_submodule(site), lambda m, i, o: outputs.append(o)):
        got = grafted_forward(base, {"ft": donor}, rules, ids, mask)
    want = reference_forward(base, {"ft": donor}, ids, mask, rules)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4
    assert torch.isfinite(got).all()
    (o_out,) = outputs
    assert not o_out[~real].any() and o_out[real].abs().sum(-1).min() > 0


def test_lean_donor_from_checkpoint_matches_loaded_donor(tmp_path) -> None:
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    donor.save_pretrained(tmp_path / "ft")
    ids, mask = batch(7)
    rules = [Graft("ft", "o+mlp", "half2", "LT"), Graft("ft", "lm_head", None, "LT")]
    from_model = grafted_forward(base, {"ft": donor}, rules, ids, mask)
    from_dir = grafted_forward(base, {"ft": tmp_path / "ft"}, rules, ids, mask)
    assert torch.equal(from_model, from_dir)
    with grafting(base, {"ft": tmp_path / "ft"}, rules) as g:
        held = g.donor_bytes["ft"]
    # o, gate, up, down of layers 2-3 plus the (tied) lm_head, fp32: exactly those tensors.
    per_layer = 32 * 32 + 3 * 32 * 48
    assert held == 4 * (2 * per_layer + VOCAB * 32)
    full = sum(p.numel() * 4 for p in donor.parameters())
    assert held < full / 2
    with grafting(base, {"ft": donor}, rules) as g:
        assert g.donor_bytes["ft"] == 0  # borrowed from the loaded donor, nothing copied


def test_embed_alone_does_not_graft_the_tied_lm_head() -> None:
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    assert adapter_for(base).tied_embeddings
    ids, mask = batch(8)
    embed_only = grafted_forward(base, {"ft": donor}, [Graft("ft", "embed", None, None)], ids, mask)
    want = reference_forward(base, {"ft": donor}, ids, mask, [Graft("ft", "embed", None, None)])
    real = mask.bool()
    assert (embed_only[real] - want[real]).abs().max() < 1e-4
    both = grafted_forward(base, {"ft": donor}, [Graft("ft", "embed+lm_head", None, None)], ids, mask)
    assert (both[real] - embed_only[real]).abs().max() > 1e-3


def test_context_manager_restores_the_model() -> None:
    base, donor = make_tiny_model("gpt2", 0), make_tiny_model("gpt2", 1)
    ids, mask = batch(2)
    before = base_logits(base, ids, mask)
    with grafting(base, {"ft": donor}, [Graft("ft", "all", "all", "LT")]):
        during = base_logits(base, ids, mask)
        during_again = base_logits(base, ids[:2], mask[:2])  # a second call, another batch shape
    assert (during - before).abs().max() > 1e-3
    assert torch.allclose(during_again, during[:2], atol=1e-5)
    assert torch.equal(base_logits(base, ids, mask), before)
    assert "forward" not in base.transformer.h[0].attn.c_attn.__dict__


def test_named_spans_resolve_per_example() -> None:
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask = batch(11)
    spans = [{"FE": (0, 2)}, {"FE": (1, 3)}, {"FE": (2, 4)}]
    rules = [Graft("ft", "all", "all", "FE+LT")]
    got = grafted_forward(base, {"ft": donor}, rules, ids, mask, spans=spans)
    want = reference_forward(base, {"ft": donor}, ids, mask, rules, spans=spans)
    assert (got[mask.bool()] - want[mask.bool()]).abs().max() < 1e-4
    explicit = [[0, 1, -1], [1, 2, -1], [2, 3, -1]]
    same = grafted_forward(base, {"ft": donor}, [Graft("ft", "all", "all", explicit)], ids, mask)
    assert torch.equal(got, same)


# ---- errors ------------------------------------------------------------------------------------


def test_unknown_component_is_named() -> None:
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask = batch(0)
    with pytest.raises(UnknownComponentError, match="'mlp_out'"):
        grafted_forward(base, {"ft": donor}, [Graft("ft", "mlp_out")], ids, mask)
    with pytest.raises(UnknownComponentError, match="'gate' is absent"):
        gpt2 = make_tiny_model("gpt2")
        grafted_forward(gpt2, {"ft": gpt2}, [Graft("ft", "gate")], ids, mask)


def test_layer_out_of_range_is_named() -> None:
    base = make_tiny_model("llama", 0)
    ids, mask = batch(0)
    with pytest.raises(LayerSelectionError, match="layer 9 out of range"):
        grafted_forward(base, {"ft": base}, [Graft("ft", "q", [1, 9])], ids, mask)


def test_position_mask_of_wrong_shape_is_named() -> None:
    base = make_tiny_model("llama", 0)
    ids, mask = batch(0)
    with pytest.raises(PositionError, match=r"shape \[batch, pos\] = \[3, 7\], got torch.bool \[3, 6\]"):
        grafted_forward(base, {"ft": base}, [Graft("ft", "q", "all", torch.ones(3, 6, dtype=torch.bool))], ids, mask)
    with pytest.raises(PositionError, match="no span 'FE'"):
        grafted_forward(base, {"ft": base}, [Graft("ft", "q", "all", "FE")], ids, mask)


def test_unknown_donor_is_named() -> None:
    base = make_tiny_model("llama", 0)
    ids, mask = batch(0)
    with pytest.raises(GraftRuleError, match="names donor 'task'; the donors are: ft"):
        grafted_forward(base, {"ft": base}, [Graft("task", "q")], ids, mask)


def test_donor_of_another_architecture_is_named(tmp_path) -> None:
    base, other = make_tiny_model("llama", 0), make_tiny_model("gpt2", 0)
    ids, mask = batch(0)
    with pytest.raises(DonorError, match="donor 'ft' is a gpt2 model, the recipient is llama"):
        grafted_forward(base, {"ft": other}, [Graft("ft", "q")], ids, mask)
    other.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(DonorError, match="donor 'ft' .* is a gpt2 model, the recipient is llama"):
        grafted_forward(base, {"ft": tmp_path / "gpt2"}, [Graft("ft", "q")], ids, mask)


def test_donor_with_other_shapes_is_named() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    base = make_tiny_model("llama", 0)
    wide = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    ids, mask = batch(0)
    with pytest.raises(
        DonorError, match=r"tensor model.layers.0.mlp.up_proj.weight has shape \[64, 32\], the recipient has \[48, 32\]"
    ):
        grafted_forward(base, {"ft": wide}, [Graft("ft", "up", 0)], ids, mask)


# ---- the embedded model ------------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_model_grafted_into_itself_is_unchanged(embedded) -> None:
    tok = embedded.tokenizer
    enc = tok(["The capital of France is", "Apple was founded by Steve"], return_tensors="pt", padding=True)
    rules = [Graft("self", "all", "all", "0+LT")]
    got = grafted_forward(embedded, {"self": embedded.location}, rules, enc.input_ids, enc.attention_mask)
    want = base_logits(embedded.model, enc.input_ids, enc.attention_mask)
    real = enc.attention_mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-4


# ---- token spans -------------------------------------------------------------------------------


@pytest.mark.embedded
def test_token_span_handles_folded_leading_spaces(embedded) -> None:
    from graftlens.data import SpanError, token_span

    tok = embedded.tokenizer
    prompt = "Q: Who stars in a movie with Maren Quist? A: An actor named"
    start, stop = token_span(tok, prompt, "Maren Quist")
    ids = tok(prompt).input_ids
    assert tok.decode(ids[start:stop]).strip() == "Maren Quist"
    assert token_span(tok, prompt, "named") == (len(ids) - 1, len(ids))
    with pytest.raises(SpanError, match="'Ada Lovelace' .* not found in prompt"):
        token_span(tok, prompt, "Ada Lovelace")


# ---- KV-cache continuation ---------------------------------------------------------------------


@pytest.mark.parametrize("split", [4, 6])
def test_a_grafted_continuation_of_a_plain_prefix_equals_the_full_pass(family: str, split: int) -> None:
    """Rules that claim only positions after ``split`` leave the prefix the base model's own: the
    prefix run plainly once, then continued from its KV cache under grafting, gives the logits of
    one full grafted pass (the new positions' owners come from rules resolved on the whole sequence)."""
    from transformers import DynamicCache

    base, a, b = make_tiny_model(family, 0), make_tiny_model(family, 1), make_tiny_model(family, 2)
    ids, mask = batch(7, b=3, t=7, left_pad=2)  # left padding: the last tokens share columns
    rules = [
        Graft("a", "attn+mlp", [0, 2], "LT"),
        Graft("b", "o+ln_mlp+embed+lm_head", [1, 3], "-1"),
        Graft("b", "q+up", "all", "-1"),
    ]
    if split == 4:
        rules.append(Graft("a", "k+v+ln_attn", [1, 2], "-3"))  # the third-last token: column 4
    donors = {"a": a, "b": b}
    full = grafted_forward(base, donors, rules, ids, mask)
    positions = position_ids_for(mask)
    cache = DynamicCache(config=base.config)
    with torch.no_grad():
        first = base(
            input_ids=ids[:, :split],
            attention_mask=mask[:, :split],
            position_ids=positions[:, :split],
            past_key_values=cache,
            use_cache=True,
        ).logits
        with grafting(base, donors, rules):
            rest = base(
                input_ids=ids[:, split:],
                attention_mask=mask,
                position_ids=positions[:, split:],
                past_key_values=cache,
                use_cache=True,
            ).logits
    got = torch.cat([first, rest], 1)
    real = mask.bool()
    real[:, :split] &= False  # the prefix is the base's own; compare what was grafted, and the prefix below
    torch.testing.assert_close(got[real], full[real], rtol=1e-4, atol=1e-4)
    prefix = mask.bool().clone()
    prefix[:, split:] = False
    torch.testing.assert_close(got[prefix], full[prefix], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(full[:, -1], base_logits(base, ids, mask)[:, -1])  # something was grafted


def test_a_continuation_with_a_short_mask_is_refused() -> None:
    from transformers import DynamicCache

    base, a = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask = batch(1, b=2, t=6, left_pad=0)
    cache = DynamicCache(config=base.config)
    with torch.no_grad(), grafting(base, {"a": a}, [Graft("a", "mlp", "all", "LT")]):
        base(input_ids=ids[:, :4], attention_mask=mask[:, :4], past_key_values=cache, use_cache=True)
        with pytest.raises(GraftRuleError.__mro__[1], match="4 cached \\+ 2 new positions, the mask has 2"):
            base(input_ids=ids[:, 4:], attention_mask=mask[:, 4:], past_key_values=cache, use_cache=True)


def test_shared_prefixes_give_the_full_pass_for_every_configuration(family: str) -> None:
    """Many LT-only configurations served from one prefix cache (restored after each) score as
    full grafted passes do; a configuration that claims earlier positions takes the full pass."""
    from graftlens.data.prompts import TokenizedPrompt
    from graftlens.eval.batching import collate
    from graftlens.graft.prefix import PrefixCaches
    from graftlens.methods.core.grafting import grafted_last_logits

    base, donor = make_tiny_model(family, 0), make_tiny_model(family, 1)
    g = torch.Generator().manual_seed(3)
    prompts = [
        TokenizedPrompt(
            f"p{i}",
            "",
            " x",
            tuple(torch.randint(3, VOCAB, (n,), generator=g).tolist()),
            target,
            {"FE": (0, 2), "LT": (n - 1, n)},
        )
        for i, (n, target) in enumerate(zip([5, 7, 3, 6], [(5,), (6, 7), (8, 9, 10), (5,)]))
    ]
    batch = collate(prompts, pad_id=0)
    prefixes = PrefixCaches()
    configs = [
        [Graft("ft", "o+mlp", "all", "LT")],
        [Graft("ft", "q+k+v", [1, 2], "LT")],
        [Graft("ft", "all", [3], "LT")],
        [Graft("ft", "attn", "all", "FE+LT")],
        [Graft("ft", "mlp+embed+lm_head", [0, 3], "LT")],
    ]
    for rules in configs * 2:  # twice: the second round reuses the cached prefix
        shared = grafted_last_logits(base, {"ft": donor}, rules, prefixes, "base", target_logprob=True)(batch)
        full = grafted_last_logits(base, {"ft": donor}, rules, target_logprob=True)(batch)
        torch.testing.assert_close(shared.logits, full.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shared.target_logprob, full.target_logprob, rtol=1e-5, atol=1e-5)
        # The first target token's scores do not depend on the target following the prompt.
        alone = grafted_last_logits(base, {"ft": donor}, rules)(batch).logits
        torch.testing.assert_close(alone, full.logits, rtol=1e-5, atol=1e-5)
    assert len(prefixes._store) == 1  # one prefix for the batch, whatever the configuration


@pytest.mark.parametrize("rows", [8, 256])  # two configurations per pass, or all of them in one
def test_configurations_as_variants_of_one_pass_give_their_own_full_pass(family: str, rows: int, monkeypatch) -> None:
    """A recipe's configurations that first claim the same column continue one prefix together,
    each grafting the rows of its own variant (LT-only ones the last column; FE+LT ones from the
    first FE column); each scores as its own full grafted pass, and the plain model as itself.
    Complements (claiming column 0) and the unembedding grafted before the last column go alone."""
    from graftlens.data.prompts import TokenizedPrompt
    from graftlens.eval.batching import collate
    from graftlens.methods.core.execution import Execution, Measures
    from graftlens.methods.core.grafting import grafted_last_logits
    from graftlens.methods.core.parts import GraftSpec, RunConfig
    from graftlens.methods.core.registry import method_for
    from graftlens.models import prefix
    from graftlens.models.loading import as_loaded

    monkeypatch.setattr(prefix, "VARIANT_ROWS", rows)  # read by the recipes' grafting readout on each batch
    base, donor = as_loaded(make_tiny_model(family, 0)), as_loaded(make_tiny_model(family, 1))
    g = torch.Generator().manual_seed(3)
    prompts = [
        TokenizedPrompt(
            f"p{i}",
            "",
            " x",
            tuple(torch.randint(3, VOCAB, (n,), generator=g).tolist()),
            target,
            {"FE": (1, 3), "LT": (n - 1, n)},
        )
        for i, (n, target) in enumerate(zip([5, 7, 3, 6], [(5, 6), (7,), (8, 9, 10), (5,)]))
    ]
    batch = collate(prompts, pad_id=0)
    specs = [
        ("o+mlp", "all", "LT"),
        ("q+k+v", [1, 2], "LT"),
        ("all", [3], "LT"),
        ("attn", "all", "FE+LT"),
        ("mlp+embed+lm_head", [0, 3], "LT"),
        ("k", "all", "LT"),
        ("v", [0], "LT"),
        ("mlp", "all", "FE"),
        ("all", "all", "(FE+LT)^C"),
        ("lm_head", "all", "FE+LT"),
    ]
    configs = [
        RunConfig(
            name=f"c{i}", panel="g", model="base", grafts=(GraftSpec(donor="ft", components=c, layers=layers, positions=p),)
        )
        for i, (c, layers, p) in enumerate(specs)
    ]
    configs.append(RunConfig(name="plain", panel="g", model="base"))
    execution = Execution({"base": base, "ft": donor}, configs=configs, measures=Measures(target_logprob=True, generate=3))
    readouts = [method_for(c.kind).readout(c, execution) for c in configs]
    for config, readout in zip(configs, readouts):
        donors = {"ft": donor} if config.grafts else {}
        full = grafted_last_logits(base, donors, config.rules(), target_logprob=True)(batch)
        got = readout(batch)
        torch.testing.assert_close(got.logits, full.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.target_logprob, full.target_logprob, rtol=1e-5, atol=1e-5)
        said = grafted_generate(base, donors, config.rules(), batch.input_ids, batch.attention_mask, batch.spans, 3)
        assert torch.equal(got.continuation, said), config.name
    from graftlens.methods.core.resources import GraftedVariants

    last = execution._batch_state[GraftedVariants()]
    assert last[1][0] == 1  # the last shared pass: the FE configurations, from column 1


def test_bounded_store_drops_the_least_recently_used_but_never_the_newest() -> None:
    from graftlens.bounded import BoundedStore

    store: BoundedStore[str] = BoundedStore(max_bytes=10)
    store.put("a", "A", 4)
    store.put("b", "B", 4)
    assert store.get("a") == "A"  # now "b" is the least recently used
    store.put("c", "C", 4)  # 12 bytes: "b" goes
    assert "b" not in store and "a" in store and "c" in store
    store.put("c", "C2", 6)  # replacing counts the new size only: 10 bytes, nothing dropped
    assert len(store) == 2 and store.get("c") == "C2"
    store.put("big", "BIG", 50)  # over the budget alone: everything else goes, the newest stays
    assert len(store) == 1 and store.get("big") == "BIG"
