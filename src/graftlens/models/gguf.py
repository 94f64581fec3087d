"""Reading a GGUF file as a plain (dequantized) transformers model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftlens.errors import ModelLoadError


def load_gguf(path: Path, dtype: torch.dtype | str = torch.float32) -> tuple[nn.Module, Any]:
    """Dequantize a GGUF file through transformers; returns a plain (unquantized) model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; name the file
        raise ModelLoadError(f"could not load GGUF file {path}: {exc}") from exc
    # The weights are dequantized; drop the GGUF quantizer so the model saves and behaves as plain.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return model, tokenizer
