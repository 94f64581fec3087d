"""Architecture adapters on tiny random models of every family."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.pytorch_utils import Conv1D

from conftest import VOCAB, make_tiny_model
from graftlens.errors import LayerSelectionError, UnknownComponentError, UnsupportedArchitectureError
from graftlens.models import adapter_for

GATED = {"llama", "mistral", "qwen2", "gemma", "gemma2", "olmo2", "phi3"}


def _out_features(module: torch.nn.Module) -> int:
    if isinstance(module, Conv1D):
        return module.nf
    return module.weight.shape[0]


def _in_features(module: torch.nn.Module) -> int:
    if isinstance(module, Conv1D):
        return module.weight.shape[0]
    return module.weight.shape[1]


def test_adapter_finds_every_component(family: str) -> None:
    model = make_tiny_model(family)
    a = adapter_for(model)
    expected = ["q", "k", "v", "o"] + (["gate"] if family in GATED else []) + ["up", "down", "ln_attn", "ln_mlp"]
    assert a.layer_components == expected
    assert a.model_components == ["embed", "lm_head", "ln_final"]
    assert a.gated_mlp == (family in GATED)
    for layer in range(a.n_layers):
        for comp in a.layer_components:
            for site in a.sites(comp, layer):
                module = model.get_submodule(site.path)
                assert any(True for _ in module.parameters(recurse=False)), site.path
                assert f".{layer}." in site.path


def test_shapes_match_config(family: str) -> None:
    model = make_tiny_model(family)
    a = adapter_for(model)
    cfg = model.config
    assert a.n_layers == cfg.num_hidden_layers == 4
    assert a.n_heads == cfg.num_attention_heads
    assert a.d_model == cfg.hidden_size
    widths = {"q": a.n_heads * a.d_head, "k": a.n_kv_heads * a.d_head, "v": a.n_kv_heads * a.d_head}
    for layer in range(a.n_layers):
        for comp, width in widths.items():
            site = a.sites(comp, layer)[0]
            module = model.get_submodule(site.path)
            n = site.n_rows if site.rows is not None else _out_features(module)
            assert n == width, (comp, site)
            assert _in_features(module) == a.d_model
        o = model.get_submodule(a.sites("o", layer)[0].path)
        assert (_in_features(o), _out_features(o)) == (a.n_heads * a.d_head, a.d_model)
        down = model.get_submodule(a.sites("down", layer)[0].path)
        up_site = a.sites("up", layer)[0]
        up = model.get_submodule(up_site.path)
        d_mlp = up_site.n_rows if up_site.rows is not None else _out_features(up)
        assert (_in_features(down), _out_features(down)) == (d_mlp, a.d_model)
    embed = model.get_submodule(a.sites("embed")[0].path)
    assert embed.weight.shape == (VOCAB, a.d_model)
    lm_head = model.get_submodule(a.sites("lm_head")[0].path)
    assert lm_head.weight.shape == (VOCAB, a.d_model)


def test_tied_embeddings_detected() -> None:
    assert adapter_for(make_tiny_model("llama")).tied_embeddings is True
    assert adapter_for(make_tiny_model("gpt_neox")).tied_embeddings is False
    assert adapter_for(make_tiny_model("gpt2")).tied_embeddings is True


def test_embed_and_lm_head_are_distinct_sites_even_when_tied() -> None:
    a = adapter_for(make_tiny_model("llama"))
    assert {s.path for s in a.sites("embed")}.isdisjoint({s.path for s in a.sites("lm_head")})


class _CaptureAttention:
    """An attention function that records the q/k/v each layer passes to attention, then runs SDPA."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        self.calls.append((query.detach().clone(), key.detach().clone(), value.detach().clone()))
        # Only the inputs are compared (hooks read the projections in this same run), so SDPA
        # without Gemma-2's soft-capping is good enough to carry the forward pass on.
        kwargs.pop("softcap", None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def test_qkv_rows_reproduce_the_models_own_split(family: str) -> None:
    """The adapter's q/k/v sites (row slices of fused projections included) give exactly the
    tensors the model hands to its attention function. RoPE is the identity at position 0, so q
    and k are compared there; v (never rotated) at every position."""
    model = make_tiny_model(family)
    a = adapter_for(model)
    capture = _CaptureAttention()
    AttentionInterface.register("graftlens_test_capture", capture)
    model.set_attn_implementation("graftlens_test_capture")

    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for layer in range(a.n_layers):
        for comp in ("q", "k", "v"):
            last = a.sites(comp, layer)[-1]  # e.g. q_norm after q_proj: the final q

            def hook(mod, inp, out, key=f"{comp}{layer}", site=last):
                idx = site.row_index()
                outputs[key] = (out if idx is None else out[..., idx]).detach().clone()

            hooks.append(model.get_submodule(last.path).register_forward_hook(hook))
    input_ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(input_ids)
    for h in hooks:
        h.remove()

    assert len(capture.calls) == a.n_layers
    for layer, (query, key, value) in enumerate(capture.calls):
        # query: [batch, head, pos, d_head]; key/value: [batch, kv_head, pos, d_head]
        for name, got, n_heads in (("q", query, a.n_heads), ("k", key, a.n_kv_heads), ("v", value, a.n_kv_heads)):
            flat = outputs[f"{name}{layer}"]  # [batch, pos, heads * d_head]
            mine = flat.view(2, 7, n_heads, a.d_head).transpose(1, 2)  # [batch, head, pos, d_head]
            positions = slice(None) if name == "v" or family == "gpt2" else slice(0, 1)
            torch.testing.assert_close(mine[:, :, positions], got[:, :, positions], rtol=0, atol=1e-6)


def test_fused_rows_cover_the_projection_once(family: str) -> None:
    """q, k, v rows of a fused projection partition its outputs: no gap, no overlap."""
    model = make_tiny_model(family)
    a = adapter_for(model)
    q, k, v = (a.sites(c, 0)[0] for c in ("q", "k", "v"))
    if q.rows is None:
        pytest.skip("separate q/k/v projections")
    rows = torch.cat([q.row_index(), k.row_index(), v.row_index()])
    width = _out_features(model.get_submodule(q.path))
    assert sorted(rows.tolist()) == list(range(width))


def test_unknown_component_and_layer_errors() -> None:
    a = adapter_for(make_tiny_model("gpt2"))
    with pytest.raises(UnknownComponentError, match="'gate' is absent"):
        a.sites("gate", 0)
    with pytest.raises(UnknownComponentError, match="unknown component 'mlp_out'"):
        a.sites("mlp_out", 0)
    with pytest.raises(LayerSelectionError, match="layer 4 out of range"):
        a.sites("q", 4)


def test_unsupported_architecture_lists_supported() -> None:
    from transformers import AutoModelForCausalLM, BloomConfig

    model = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4))
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'bloom'.*gpt2.*llama"):
        adapter_for(model)
