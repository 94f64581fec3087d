"""Geva et al.'s three steps as library functions, on every family's tiny model: cancelling
sublayer updates (nothing cancelled is the model bit for bit; every MLP cancelled is a model whose
MLPs return zero, built by hand), mean ablation, and the value–output maps of heads (equal to a
head's contribution read from hooks when its attention is one-hot; grouped-query heads read the
right KV head)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_tiny_model
from graftlens.errors import LayerSelectionError
from graftlens.interventions import attention_knockout, capture
from graftlens.interventions.mappings import MappingError, head_mapping_vectors, kv_head_of, value_output
from graftlens.interventions.sublayers import (
    SublayerError,
    cancel_sublayers,
    sublayer_means,
    through_last,
    window_layers,
)
from graftlens.models.loading import as_loaded
from graftlens.models.run import run_logits

SEQ = 7


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts, the second left-padded by two."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (2, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return ids, mask


class _ZeroMLP(nn.Module):
    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def test_cancelling_nothing_is_the_model_bit_for_bit(family: str) -> None:
    model = as_loaded(make_tiny_model(family))
    ids, mask = _batch()
    plain = run_logits(model, ids, mask)
    for sublayer in ("mlp", "attn"):
        with cancel_sublayers(model, sublayer, []):
            assert torch.equal(run_logits(model, ids, mask), plain)
        with cancel_sublayers(model, sublayer, range(4), [[], []]):  # every layer, no position
            assert torch.equal(run_logits(model, ids, mask), plain)


def test_cancelling_every_mlp_everywhere_is_a_model_whose_mlps_return_zero(family: str) -> None:
    model = as_loaded(make_tiny_model(family))
    ids, mask = _batch()
    n = model.adapter.n_layers
    with cancel_sublayers(model, "mlp", range(n), "all"):
        cancelled = run_logits(model, ids, mask)
    by_hand = make_tiny_model(family)
    for layer in range(n):
        path = model.adapter.mlp_block(layer)
        assert path is not None
        parent, name = path.rsplit(".", 1)
        setattr(by_hand.get_submodule(parent), name, _ZeroMLP())
    expected = run_logits(by_hand, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(cancelled[real], expected[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cancelled[real], run_logits(model, ids, mask)[real], atol=1e-3)


def test_cancellation_touches_only_the_chosen_positions_and_layers(family: str) -> None:
    model = as_loaded(make_tiny_model(family))
    ids, mask = _batch()
    positions = [[2], [1]]  # prompt coordinates; "through" takes 0..2 and 0..1
    with capture(model, ["attn_out.1", "attn_out.2"]) as plain:
        run_logits(model, ids, mask)
    with cancel_sublayers(model, "attn", [1], positions, through=True), capture(model, ["attn_out.1", "attn_out.2"]) as cut:
        run_logits(model, ids, mask)
    touched = torch.zeros_like(mask, dtype=torch.bool)
    touched[0, :3] = True
    touched[1, 2:4] = True  # two padding positions first
    assert torch.equal(cut["attn_out.1"][touched], torch.zeros_like(cut["attn_out.1"][touched]))
    assert torch.equal(cut["attn_out.1"][~touched], plain["attn_out.1"][~touched])
    # Layer 2 is not cancelled but sees the changed stream from position 0 on.
    assert not torch.allclose(cut["attn_out.2"][touched], plain["attn_out.2"][touched])


def test_through_last_takes_every_real_position_up_to_the_last_one_picked() -> None:
    mask = torch.tensor([[0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    expected = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(through_last(mask, attention), expected)


def test_mean_ablation_writes_the_mean_over_the_touched_positions() -> None:
    model = as_loaded(make_tiny_model("llama"))
    ids, mask = _batch()
    means = sublayer_means(model, [(ids, mask, None)], "mlp", [0, 2], "all")
    with capture(model, ["mlp_out.0", "mlp_out.2"]) as plain:
        run_logits(model, ids, mask)
    real = mask.bool()
    for layer in (0, 2):
        torch.testing.assert_close(means[layer], plain[f"mlp_out.{layer}"][real].mean(0), atol=1e-6, rtol=1e-5)
    with cancel_sublayers(model, "mlp", [0], [[0], [0]], means=means), capture(model, ["mlp_out.0"]) as cut:
        run_logits(model, ids, mask)
    torch.testing.assert_close(cut["mlp_out.0"][0, 0], means[0])
    torch.testing.assert_close(cut["mlp_out.0"][1, 2], means[0])
    with pytest.raises(SublayerError, match=r"no means for layers \[1\]"):
        with cancel_sublayers(model, "mlp", [1], "all", means=means):
            pass


def test_bad_sublayer_input_gets_one_clear_error() -> None:
    model = as_loaded(make_tiny_model("llama"))
    with pytest.raises(SublayerError, match="unknown sublayer 'ffn'"):
        with cancel_sublayers(model, "ffn", [0]):
            pass
    with pytest.raises(LayerSelectionError, match=r"\[4\] out of range"):
        with cancel_sublayers(model, "mlp", [4]):
            pass
    with pytest.raises(SublayerError, match="window of 5 layers does not fit a model of 4 layers"):
        window_layers(0, 5, 4)
    with pytest.raises(LayerSelectionError, match="window start 4 out of range"):
        window_layers(4, 2, 4)
    assert window_layers(2, 3, 4) == [2, 3]
    with pytest.raises(MappingError, match="unknown mapping source"):
        head_mapping_vectors(model, *_batch(), [0], "LT", "residual")
    with pytest.raises(LayerSelectionError, match=r"\[9\] out of range"):
        head_mapping_vectors(model, *_batch(), [9], "LT")


def _one_hot_contributions(model, ids, mask, layer: int, source: int) -> torch.Tensor:
    """Each head's contribution at the last position, read from hooks, with the last position's
    attention in ``layer`` one-hot on ``source`` (every other edge from it knocked out)."""
    edges = torch.zeros(ids.shape[0], SEQ, SEQ, dtype=torch.bool)
    edges[:, -1, :] = True
    edges[:, -1, source] = False
    with attention_knockout(model, [layer], edges=edges), capture(model, [f"z.{layer}", f"attn_out.{layer}"]) as cache:
        run_logits(model, ids, mask)
    z = cache[f"z.{layer}"][:, -1]  # [batch, heads, d_head]
    a = model.adapter
    o_proj = model.model.get_submodule(model.adapter.sites("o", layer)[0].path)
    bias = o_proj(torch.zeros(1, a.n_heads * a.d_head))
    per_head = []
    for h in range(a.n_heads):
        only = torch.zeros_like(z)
        only[:, h] = z[:, h]
        per_head.append(o_proj(only.flatten(-2)) - bias)
    out = torch.stack(per_head, 1)  # [batch, heads, d_model]
    torch.testing.assert_close(out.sum(1) + bias, cache[f"attn_out.{layer}"][:, -1], atol=1e-5, rtol=1e-5)
    return out


def test_value_output_map_is_the_heads_contribution_under_one_hot_attention(family: str) -> None:
    model = as_loaded(make_tiny_model(family))
    ids, mask = _batch()
    ids, mask = ids[:1], mask[:1]
    layer, source = 2, 3
    with torch.no_grad():
        contributions = _one_hot_contributions(model, ids, mask, layer, source)
    mapped = head_mapping_vectors(model, ids, mask, [layer], [[source]], "hidden")[:, 0]  # [batch, heads, d_model]
    torch.testing.assert_close(mapped, contributions, atol=1e-5, rtol=1e-5)


def test_grouped_query_heads_read_their_kv_head() -> None:
    from transformers.models.llama.modeling_llama import repeat_kv

    for n_heads, n_kv in ((4, 2), (8, 2), (6, 3), (4, 4), (4, 1)):
        kv = torch.arange(n_kv, dtype=torch.float32).view(1, n_kv, 1, 1)
        repeated = repeat_kv(kv, n_heads // n_kv).flatten().tolist()  # what each query head reads in transformers
        assert [kv_head_of(h, n_heads, n_kv) for h in range(n_heads)] == repeated
    model = as_loaded(make_tiny_model("llama"))  # 4 query heads over 2 KV heads
    v = torch.zeros(1, 2, model.adapter.d_head)
    v[0, 1] = 1.0  # only KV head 1 has a value: query heads 2 and 3 read it
    with torch.no_grad():
        out = value_output(model, 1, v)[0]  # [heads, d_model]
    assert [bool(out[h].abs().sum() > 0) for h in range(4)] == [False, False, True, True]


def test_embedding_source_is_the_hidden_source_at_layer_zero_and_the_embedding_through_the_layer(family: str) -> None:
    model = as_loaded(make_tiny_model(family))
    ids, mask = _batch()
    where = [[4], [3]]
    hidden = head_mapping_vectors(model, ids, mask, [0, 2], where, "hidden")
    embedded = head_mapping_vectors(model, ids, mask, [0, 2], where, "embedding")
    torch.testing.assert_close(embedded[:, 0], hidden[:, 0], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(embedded[:, 1], hidden[:, 1], atol=1e-4)
    if family == "llama":  # by hand: the layer's input norm and value projection on the token embedding
        layer = model.model.model.layers[2]
        emb = model.model.model.embed_tokens(ids[:, None, 4].clone())[:, 0]  # row 0 real position 4; row 1 padded 2 + 3
        emb[1] = model.model.model.embed_tokens(ids[1, 5])
        with torch.no_grad():
            v = layer.self_attn.v_proj(layer.input_layernorm(emb)).unflatten(-1, (2, model.adapter.d_head))
            torch.testing.assert_close(embedded[:, 1], value_output(model, 2, v), atol=1e-5, rtol=1e-5)
