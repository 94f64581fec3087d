"""Next-token loss computed only where it counts.

The unembedding is the largest matrix product of a small model (SmolLM2-135M: 576 x 49152).
Applying it only to the hidden states whose next token carries a label, instead of to every
position, saves most of that cost without changing the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def backbone_of(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (``model.model``, ``model.transformer``, ...)."""
    inner = getattr(model, "get_base_model", None)
    hf = inner() if callable(inner) else model  # a peft wrapper: the HF model with LoRA layers inside
    return getattr(hf, hf.base_model_prefix)


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens; ``labels[b, j]`` is predicted from position ``j - 1``."""
    hidden = backbone_of(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, D]
    targets = labels[:, 1:]  # [B, T-1]
    keep = targets != -100
    picked = hidden[:, :-1][keep]  # [N, D]
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    logits = hf.get_output_embeddings()(picked)  # [N, V]
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), targets[keep])
