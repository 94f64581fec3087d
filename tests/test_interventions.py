"""Activation-level methods on tiny random models of every family: identities and hand computations."""

from __future__ import annotations

import pytest
import torch

from conftest import VOCAB, make_tiny_model
from graftlens.errors import LayerSelectionError
from graftlens.interventions import (
    POINT_NAMES,
    KnockoutError,
    Patch,
    PatchError,
    Point,
    PointError,
    activation_patching,
    attention_knockout,
    capture,
    cross_model_patched_logits,
    edit,
    knockout_edges,
    parse_point,
    patched_logits,
    point_logits,
    run_with_cache,
)
from graftlens.models import run_logits
from graftlens.models.loading import as_loaded as as_loaded_model

SEQ = 7


def _inputs(batch: int = 3, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def _all_points(n_layers: int) -> list[Point]:
    return [Point(name, layer) for name in POINT_NAMES for layer in range(n_layers)]


def test_points_parse_and_errors():
    assert parse_point("z.5") == Point("z", 5)
    assert str(Point("resid_post", 2)) == "resid_post.2"
    with pytest.raises(PointError, match="unknown hook point 'zz'"):
        parse_point("zz.1")
    with pytest.raises(PointError, match="NAME.LAYER"):
        parse_point("z")
    model = make_tiny_model("llama")
    with pytest.raises(LayerSelectionError, match="layer 9 out of range"), capture(model, ["z.9"]):
        pass


def test_capture_shapes_and_consistency(family):
    model = make_tiny_model(family)
    loaded = as_loaded_model(model)
    a = loaded.adapter
    ids = _inputs()
    logits, cache = run_with_cache(model, ids, None, _all_points(a.n_layers))
    assert torch.equal(logits, run_logits(model, ids))  # capturing changes nothing
    for layer in range(a.n_layers):
        assert cache[f"z.{layer}"].shape == (3, SEQ, a.n_heads, a.d_head)
        assert cache[f"q.{layer}"].shape == (3, SEQ, a.n_heads, a.d_head)
        assert cache[f"k.{layer}"].shape == (3, SEQ, a.n_kv_heads, a.d_head)
        assert cache[f"v.{layer}"].shape == (3, SEQ, a.n_kv_heads, a.d_head)
        for name in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
            assert cache[f"{name}.{layer}"].shape == (3, SEQ, a.d_model)
        # attn_out is the output projection applied to the concatenated head outputs
        o_proj = model.get_submodule(a.sites("o", layer)[0].path)
        torch.testing.assert_close(o_proj(cache[f"z.{layer}"].flatten(-2)), cache[f"attn_out.{layer}"], rtol=0, atol=1e-6)
        if layer + 1 < a.n_layers:
            assert torch.equal(cache[f"resid_post.{layer}"], cache[f"resid_pre.{layer + 1}"])


def test_identity_edits_and_self_patching_change_nothing(family):
    """Writing every point back unchanged, or patching a run into itself, is bit for bit the model."""
    model = make_tiny_model(family)
    n = as_loaded_model(model).adapter.n_layers
    ids = _inputs()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding in one row
    plain = run_logits(model, ids, mask)
    with edit(model, {p: (lambda x: x) for p in _all_points(n)}):
        assert torch.equal(run_logits(model, ids, mask), plain)
    _, cache = run_with_cache(model, ids, mask, _all_points(n))
    patches = [Patch(p, cache[p]) for p in _all_points(n)]
    assert torch.equal(patched_logits(model, ids, mask, patches), plain)


def test_cmap_with_the_base_as_donor_changes_nothing(family):
    base = make_tiny_model(family)
    n = as_loaded_model(base).adapter.n_layers
    ids = _inputs()
    points = [Point(name, layer) for name in ("z", "q", "k", "v") for layer in range(n)]
    _, donor_activations = run_with_cache(base, ids, None, points)
    heads = {p: None for p in points}
    assert torch.equal(cross_model_patched_logits(base, donor_activations, ids, None, heads), run_logits(base, ids))


def test_cmap_patches_only_the_chosen_heads_and_positions():
    base, donor = make_tiny_model("llama", seed=0), make_tiny_model("llama", seed=1)
    ids = _inputs()
    where = "2"  # prompt position 2 of every example
    _, donor_activations = run_with_cache(donor, ids, None, ["z.1"])
    with capture(base, ["z.1"]) as patched:
        cross_model_patched_logits(base, donor_activations, ids, None, {"z.1": [3]}, where)
    _, base_cache = run_with_cache(base, ids, None, ["z.1"])
    got, want_base, want_donor = patched["z.1"], base_cache["z.1"], donor_activations["z.1"]
    assert torch.equal(got[:, 2, 3], want_donor[:, 2, 3])
    keep = torch.ones_like(got, dtype=torch.bool)
    keep[:, 2, 3] = False
    assert torch.equal(got[keep], want_base[keep])
    assert not torch.equal(want_base[:, 2, 3], want_donor[:, 2, 3])
    with pytest.raises(PatchError, match="heads \\[7\\] out of range"):
        cross_model_patched_logits(base, donor_activations, ids, None, {"z.1": [7]}, where)
    with pytest.raises(PatchError, match="no z.2"):
        cross_model_patched_logits(base, donor_activations, ids, None, {"z.2": None}, where)


def _rotary(model, q, k, position_ids):
    """Rotary embeddings as the llama family applies them (q, k: [batch, head, pos, d_head])."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = model.model.rotary_emb(q, position_ids)
    return apply_rotary_pos_emb(q, k, cos, sin)


def _heads_by_hand(family: str, model, cache, layer: int, blocked: torch.Tensor | None = None) -> torch.Tensor:
    """Head outputs ``[batch, pos, head, d_head]`` from hooked q, k, v: softmax(q·k/√d + mask) · v."""
    q = cache[f"q.{layer}"].transpose(1, 2)  # [batch, head, pos, d_head]
    k = cache[f"k.{layer}"].transpose(1, 2)
    v = cache[f"v.{layer}"].transpose(1, 2)
    batch, _, seq, d = q.shape
    if family == "llama":
        q, k = _rotary(model, q, k, torch.arange(seq)[None].expand(batch, seq))
        rep = q.shape[1] // k.shape[1]  # grouped-query attention: each KV head serves `rep` query heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2) / d**0.5  # [batch, head, pos, pos]
    allowed = torch.ones(seq, seq, dtype=torch.bool).tril()[None, None]
    if blocked is not None:
        allowed = allowed & ~blocked[:, None]
    pattern = scores.masked_fill(~allowed, float("-inf")).softmax(-1)  # [batch, head, query, key]
    return (pattern @ v).transpose(1, 2)  # [batch, pos, head, d_head]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_head_outputs_match_a_hand_computation(family):
    model = make_tiny_model(family)
    ids = _inputs()
    _, cache = run_with_cache(model, ids, None, ["q.2", "k.2", "v.2", "z.2"])
    torch.testing.assert_close(_heads_by_hand(family, model, cache, 2), cache["z.2"], rtol=0, atol=1e-5)


def test_knockout_of_nothing_changes_nothing(family):
    model = make_tiny_model(family)
    n = as_loaded_model(model).adapter.n_layers
    ids = _inputs()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    plain = run_logits(model, ids, mask)
    with attention_knockout(model, range(n), edges=torch.zeros(3, SEQ, SEQ, dtype=torch.bool)):
        assert torch.equal(run_logits(model, ids, mask), plain)
    assert torch.equal(run_logits(model, ids, mask), plain)  # and the model is restored afterwards


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_knockout_matches_a_hand_masked_attention(family):
    model = make_tiny_model(family)
    ids = _inputs()
    sources = torch.zeros_like(ids, dtype=torch.bool)
    sources[:, 1:3] = True
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[:, -1] = True
    edges = knockout_edges(sources, targets)
    with attention_knockout(model, [1], edges=edges), capture(model, ["q.1", "k.1", "v.1", "z.1"]) as cache:
        run_logits(model, ids)
    torch.testing.assert_close(_heads_by_hand(family, model, cache, 1, edges), cache["z.1"], rtol=0, atol=1e-5)
    _, plain = run_with_cache(model, ids, None, ["z.1"])
    assert torch.equal(cache["z.1"][:, :-1], plain["z.1"][:, :-1])  # only the last query row moved
    assert not torch.allclose(cache["z.1"][:, -1], plain["z.1"][:, -1])


def test_a_fully_blocked_row_attends_to_nothing(family):
    """Blocking every edge of the last position gives that row zero head outputs, not NaN or uniform attention."""
    model = make_tiny_model(family)
    ids = _inputs()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[:, -1] = True
    edges = knockout_edges(torch.ones_like(targets), targets)
    with attention_knockout(model, [0], edges=edges), capture(model, ["z.0", "z.1"]) as cache:
        logits = run_logits(model, ids, mask)
    assert torch.isfinite(logits).all()
    assert torch.equal(cache["z.0"][:, -1], torch.zeros_like(cache["z.0"][:, -1]))
    assert cache["z.0"][:, :-1].abs().sum() > 0


def test_knockout_per_example_results_do_not_depend_on_padding():
    model = make_tiny_model("llama")
    short, long = _inputs(1, 4, seed=3), _inputs(1, SEQ, seed=4)
    ids = torch.cat([torch.cat([torch.zeros(1, SEQ - 4, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(ids)
    mask[0, : SEQ - 4] = 0
    sources = torch.zeros_like(ids, dtype=torch.bool)
    sources[0, SEQ - 4] = sources[1, 0] = True  # each row's first real token
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[:, -1] = True
    with attention_knockout(model, [0, 1], edges=knockout_edges(sources, targets)):
        batched = run_logits(model, ids, mask)[:, -1]
    for row, alone in ((0, short), (1, long)):
        s = torch.zeros_like(alone, dtype=torch.bool)
        s[0, 0] = True
        t = torch.zeros_like(alone, dtype=torch.bool)
        t[0, -1] = True
        with attention_knockout(model, [0, 1], edges=knockout_edges(s, t)):
            torch.testing.assert_close(run_logits(model, alone)[:, -1], batched[row : row + 1], rtol=0, atol=1e-5)


def test_knockout_errors():
    model = make_tiny_model("llama")
    ids = _inputs()
    none = torch.zeros(3, SEQ, SEQ, dtype=torch.bool)
    with pytest.raises(LayerSelectionError, match="knockout layers \\[4\\]"), attention_knockout(model, [4], edges=none):
        pass
    with pytest.raises(KnockoutError, match="BoolTensor"), attention_knockout(model, [0], edges=torch.zeros(3, SEQ)):
        pass
    with pytest.raises(KnockoutError, match="do not fit a batch of 2"), attention_knockout(model, [0], edges=none):
        run_logits(model, ids[:2])
    assert model.config._attn_implementation == "sdpa"  # restored after the error


def test_activation_patching_recovers_the_clean_run_at_the_changed_token(tmp_path):
    model = make_tiny_model("llama")
    clean = _inputs(2)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 5) % VOCAB
    targets = run_logits(model, clean)[:, -1].argmax(-1)
    sweep = activation_patching(model, clean, corrupted, targets, "resid_pre")
    assert sweep.scores.shape == (4, SEQ)
    # Layer 0's input differs only at the changed token: patching it there gives the clean run back.
    assert sweep.scores[0, 2].item() == pytest.approx(sweep.clean, abs=1e-6)
    assert sweep.recovered[0, 2].item() == pytest.approx(1.0, abs=1e-5)
    assert sweep.scores[0, 0].item() == pytest.approx(sweep.corrupted, abs=1e-6)  # an unchanged token: nothing
    # Clean into clean: every patch gives the clean value.
    same = activation_patching(model, clean, clean, targets, "z", by="head")
    assert same.scores.shape == (4, 4)
    torch.testing.assert_close(same.scores, torch.full((4, 4), same.clean), rtol=0, atol=1e-6)
    from graftlens.charts import patching_heatmap, save

    saved = save(patching_heatmap(sweep, [f"t{j}" for j in range(SEQ)]), tmp_path, "patching", "patching")
    assert saved.png.stat().st_size > 1000
    again = save(patching_heatmap(sweep, [f"t{j}" for j in range(SEQ)]), tmp_path / "again", "patching", "patching")
    assert again.png.read_bytes() == saved.png.read_bytes()  # figures are reproducible, byte for byte
    assert again.svg.read_bytes() == saved.svg.read_bytes()
    with pytest.raises(PatchError, match="token-aligned"):
        activation_patching(model, clean, corrupted[:, :-1], targets)
    with pytest.raises(PatchError, match="per-head point"):
        activation_patching(model, clean, corrupted, targets, "resid_pre", by="head")
    with pytest.raises(PatchError, match="per-head point"):
        activation_patching(model, clean, corrupted, targets, "resid_pre", by="position_head")
    with pytest.raises(PatchError, match="choose 'position', 'head' or 'position_head'"):
        activation_patching(model, clean, corrupted, targets, "z", by="head_position")


def test_projecting_the_last_residual_gives_the_model_logits(family):
    model = make_tiny_model(family)
    n = as_loaded_model(model).adapter.n_layers
    ids = _inputs()
    got = point_logits(model, ids, None, [f"resid_post.{n - 1}"], "LT")[f"resid_post.{n - 1}"]
    want = run_logits(model, ids)[:, -1]
    if family == "gemma2":  # final logit soft-capping is left out: monotonic, same ranking
        assert torch.equal(got.argsort(-1), want.argsort(-1))
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ---- the redesign's promises: one position convention, scoped knockout, aliases, gradients ----


def test_transformerlens_names_are_aliases():
    from graftlens.interventions.points import TL_ALIASES

    for alias, name in TL_ALIASES.items():
        assert parse_point(alias.format(l=3)) == Point(name, 3)
    with pytest.raises(PointError, match="'blocks.1.hook_resid_mid' has no graftlens point"):
        parse_point("blocks.1.hook_resid_mid")
    model = make_tiny_model("llama")
    ids = _inputs()
    _, by_tl = run_with_cache(model, ids, None, ["blocks.2.attn.hook_z", "blocks.1.hook_resid_post"])
    _, by_name = run_with_cache(model, ids, None, ["z.2", "resid_post.1"])
    assert torch.equal(by_tl["z.2"], by_name["blocks.2.attn.hook_z"])
    assert torch.equal(by_tl["blocks.1.hook_resid_post"], by_name["resid_post.1"])


def _left_padded() -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    ids = _inputs()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # example 0: 5 real tokens, starting at column 2
    mask[2, :1] = 0  # example 2: 6 real tokens, starting at column 1
    spans = [{"FE": (0, 2)}, {"FE": (1, 3)}, {"FE": (2, 4)}]
    return ids, mask, spans


def test_knockout_selectors_equal_their_padded_edges(family):
    """Selectors in prompt coordinates, resolved per call, block what the hand-built padded edges block."""
    model = make_tiny_model(family)
    ids, mask, spans = _left_padded()
    sources = torch.zeros_like(ids, dtype=torch.bool)
    sources[0, 2:4] = sources[1, 1:3] = sources[2, 3:5] = True  # FE of each example, in padded columns
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[:, -1] = True
    with attention_knockout(model, [0, 2], edges=knockout_edges(sources, targets)):
        by_edges = run_logits(model, ids, mask)
    with attention_knockout(model, [0, 2], "FE", "LT", spans=spans):
        by_selectors = run_logits(model, ids, mask)
    assert torch.equal(by_selectors, by_edges)
    assert not torch.equal(by_edges, run_logits(model, ids, mask))


def test_nested_knockouts_block_the_union_and_leave_no_trace():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = make_tiny_model("llama")
    ids, mask, spans = _left_padded()
    plain = run_logits(model, ids, mask)
    before = (set(ALL_ATTENTION_FUNCTIONS._global_mapping), set(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping))
    with attention_knockout(model, [1], "0,1", "LT"), attention_knockout(model, [1, 2], "FE", "LT", spans=spans):
        nested = run_logits(model, ids, mask)
        with attention_knockout(model, [3], "all", "all"):
            deeper = run_logits(model, ids, mask)
        assert torch.equal(run_logits(model, ids, mask), nested)  # the inner block's exit undid only itself
    with attention_knockout(model, [1], "0,1+FE", "LT", spans=spans), attention_knockout(model, [2], "FE", "LT", spans=spans):
        union = run_logits(model, ids, mask)
    assert torch.equal(nested, union)
    assert not torch.equal(deeper, nested)
    assert torch.equal(run_logits(model, ids, mask), plain)
    assert model.config._attn_implementation == "sdpa"
    after = (set(ALL_ATTENTION_FUNCTIONS._global_mapping), set(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping))
    assert after == before  # nothing left registered in transformers' global registries


def test_patch_positions_are_selectors_in_prompt_coordinates():
    """A patch at "FE" writes each example's own span, whatever its padding; the same as a padded mask."""
    base, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask, spans = _left_padded()
    _, source = run_with_cache(donor, ids, mask, ["resid_pre.2"])
    where = torch.zeros_like(ids, dtype=torch.bool)
    where[0, 2:4] = where[1, 1:3] = where[2, 3:5] = True
    by_mask = patched_logits(base, ids, mask, [Patch(Point("resid_pre", 2), source["resid_pre.2"], where)])
    by_span = patched_logits(base, ids, mask, [Patch(Point("resid_pre", 2), source["resid_pre.2"], "FE")], spans=spans)
    assert torch.equal(by_mask, by_span)
    by_lists = patched_logits(base, ids, mask, [Patch(Point("resid_pre", 2), source["resid_pre.2"], [[0, 1], [1, 2], [2, 3]])])
    assert torch.equal(by_mask, by_lists)
    lens = point_logits(base, ids, mask, ["resid_post.3"], "FE", spans=spans)["resid_post.3"]  # last FE token
    full = run_with_cache(base, ids, mask, ["resid_post.3"])[1]["resid_post.3"]
    from graftlens.interventions.lens import project

    torch.testing.assert_close(lens, project(base, full[torch.arange(3), torch.tensor([3, 2, 4])]), rtol=0, atol=0)


def test_gradients_flow_through_captures_patches_and_grafts(family):
    """With ``grad``, a learnable scale on a head output gets the gradient finite differences give,
    in a plain, a patched and a grafted run; without it nothing keeps a graph."""
    from graftlens import Graft, grafting

    base, donor = make_tiny_model(family, 0), make_tiny_model(family, 1)
    ids, mask, _ = _left_padded()
    scale = torch.tensor(1.0, requires_grad=True)
    rules = [Graft("ft", "attn+mlp", [0, 1], "LT")]

    def loss(s: torch.Tensor, grafted: bool, grad: bool) -> torch.Tensor:
        with edit(base, {"z.1": lambda z: z * s}), grafting(base, {"ft": donor}, rules) if grafted else _nothing():
            logits = run_logits(base, ids, mask, last_only=True, grad=grad)
        return logits.float().logsumexp(-1).sum()

    for grafted in (False, True):
        value = loss(scale, grafted, grad=True)
        (got,) = torch.autograd.grad(value, scale)
        eps = 1e-2
        with torch.no_grad():
            want = (loss(torch.tensor(1 + eps), grafted, False) - loss(torch.tensor(1 - eps), grafted, False)) / (2 * eps)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)
        assert not loss(scale, grafted, grad=False).requires_grad
    _, cache = run_with_cache(base, ids, mask, ["resid_post.0"], grad=True)
    assert cache["resid_post.0"].requires_grad and cache["resid_post.0"].grad_fn is not None
    _, detached = run_with_cache(base, ids, mask, ["resid_post.0"])
    assert not detached["resid_post.0"].requires_grad


def _nothing():
    import contextlib

    return contextlib.nullcontext()
