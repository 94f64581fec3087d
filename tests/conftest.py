"""Shared fixtures: tiny random models of every family (built from configs, no download) and a
fresh cache for the embedded model, so each test session exercises the real cold path once."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

# Never reach a hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = 96


def _tiny_configs() -> dict[str, Callable[[], object]]:
    from transformers import (
        Gemma2Config,
        GemmaConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen2Config,
    )

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4)
    return {
        # GQA: 4 query heads share 2 KV heads; tied embeddings like SmolLM2.
        "llama": lambda: LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True),
        "mistral": lambda: MistralConfig(**common, num_key_value_heads=2, sliding_window=None),
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=2),
        "gemma": lambda: GemmaConfig(**common, num_key_value_heads=1, head_dim=8),
        "gemma2": lambda: Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=16),
        "olmo2": lambda: Olmo2Config(**common, num_key_value_heads=2, pad_token_id=1, eos_token_id=2),
        "phi3": lambda: Phi3Config(**common, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "gpt2": lambda: GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=64, bos_token_id=2, eos_token_id=2
        ),
        "gpt_neox": lambda: GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            rotary_pct=0.5,
            tie_word_embeddings=False,
            bos_token_id=2,
            eos_token_id=2,
        ),
    }


FAMILIES = list(_tiny_configs())


def make_tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random causal LM of ``family`` in fp32, eval mode, its default attention."""
    from transformers import AutoModelForCausalLM

    config = _tiny_configs()[family]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # SDPA where the family supports it
    # Random init leaves norms at 1 and biases at 0; perturb every parameter so that a wrong
    # slice or a skipped module cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def graftlens_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A cache directory for this test session (GRAFTLENS_CACHE wins if the caller set it)."""
    path = os.environ.get("GRAFTLENS_TEST_CACHE") or str(tmp_path_factory.mktemp("graftlens-cache"))
    os.environ["GRAFTLENS_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def embedded(graftlens_cache: str):
    """The embedded SmolLM2-135M model, loaded once per session."""
    from graftlens import load_model

    return load_model("smollm2-135m")


def make_tiny_tokenizer():
    """A word-level tokenizer over ``VOCAB`` tokens (``w0 w1 ...``), saved with the tiny models."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def save_tiny_model(family: str, path, seed: int = 0):
    """Save a tiny model and its tokenizer as a ``save_pretrained`` directory; return the model."""
    model = make_tiny_model(family, seed)
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return model


def make_text_tokenizer(texts: list[str], vocab_size: int = 320):
    """A small byte-level BPE tokenizer trained on ``texts`` (offsets fold the leading space in, like GPT-2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def make_text_model(family: str, tokenizer, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of ``family`` whose vocabulary fits ``tokenizer``."""
    from transformers import AutoModelForCausalLM

    config = _tiny_configs()[family]()
    config.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def small_facts():
    """A small new-fact dataset (4 facts) for fast tests."""
    from graftlens.data.dataset import build_dataset

    return build_dataset("fake_actors", n_facts=4, seed=0)


@pytest.fixture(scope="session")
def text_tokenizer(small_facts):
    texts = [t.text for t in small_facts.train] + [e.prompt + e.target for e in small_facts.test]
    return make_text_tokenizer(texts)


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory, text_tokenizer) -> str:
    """A tiny llama with the BPE tokenizer, saved as a ``save_pretrained`` directory."""
    path = tmp_path_factory.mktemp("text-llama")
    make_text_model("llama", text_tokenizer).save_pretrained(path)
    text_tokenizer.save_pretrained(path)
    return str(path)
