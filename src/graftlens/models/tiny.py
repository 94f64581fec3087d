"""Tiny random models of every supported family, built from configs (no download).

They are what the tests run on, and what the docstring examples use: a few kilobytes of random
weights with the real architecture, so an example runs in milliseconds on any machine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from graftlens.errors import ModelLoadError
from graftlens.models.loading import LoadedModel, as_loaded

TINY_VOCAB = 96


def tiny_configs() -> dict[str, Callable[[], object]]:
    """Family name → a function making a tiny transformers config of that family (4 layers, 4 heads, width 32)."""
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

    common = dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4)
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
            vocab_size=TINY_VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=64, bos_token_id=2, eos_token_id=2
        ),
        "gpt_neox": lambda: GPTNeoXConfig(
            vocab_size=TINY_VOCAB,
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


def tiny_tokenizer():
    """A character-level tokenizer of ``TINY_VOCAB`` tokens: ``<unk>``, ``<pad>``, ``<eos>`` and the
    printable ASCII characters from the space to ``|`` (any other character is ``<unk>``), with
    offsets, so prompts with spans can be made from any text for a tiny model.

    >>> from graftlens.models.tiny import tiny_tokenizer
    >>> tiny_tokenizer()("Ann stars")["input_ids"]
    [36, 81, 81, 3, 86, 87, 68, 85, 86]
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2}
    vocab.update({chr(32 + i): 3 + i for i in range(TINY_VOCAB - 3)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def tiny_model(family: str = "llama", seed: int = 0) -> LoadedModel:
    """A tiny random causal LM of ``family`` (fp32, eval mode), with a character-level tokenizer
    (`tiny_tokenizer`).

    Every parameter is perturbed from its initial value (norms away from 1, biases away from 0),
    so that a wrong slice or a skipped module shows in its outputs.

    >>> from graftlens.models import tiny_model
    >>> m = tiny_model("gpt2", seed=1)
    >>> m.adapter.n_layers, m.adapter.n_heads
    (4, 4)
    """
    from transformers import AutoModelForCausalLM

    configs = tiny_configs()
    if family not in configs:
        raise ModelLoadError(f"no tiny model of family {family!r}; choose one of {', '.join(configs)}")
    config = configs[family]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return as_loaded(model.eval(), tiny_tokenizer())
