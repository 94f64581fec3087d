"""What a finetuning run is: its inputs and hyperparameters, validated, and their content hash."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from graftlens.configfiles import Seed

#: Bumped when the training code changes what a given config produces (old checkpoints then miss).
TRAINING_CODE_VERSION = 1


class LoraSettings(BaseModel):
    """LoRA through peft on the canonical projections; merged into the base when used as a donor."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    rank: int = Field(16, ge=1, le=65_536)
    """the adapter's rank"""
    alpha: float = Field(32.0, gt=0)
    """LoRA's scaling numerator (the update is scaled by alpha / rank)"""
    dropout: float = Field(0.0, ge=0, lt=1)
    """dropout on the adapter's input"""
    components: list[str] = Field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])
    """canonical components that get an adapter"""


class FinetuneConfig(BaseModel):
    """Hyperparameters of a finetuning run. Unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    split: Literal["all", "A", "B"] = "all"
    """which facts are trained on: `all`, or split `A` or `B` (disjoint halves)"""
    epochs: int = Field(6, ge=1, le=10_000)
    """passes over the training texts"""
    learning_rate: float = Field(1e-4, gt=0)
    """AdamW's peak learning rate"""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """share of the steps with a linear warmup"""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """the learning rate after warmup: `cosine`, `linear` or `constant`"""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's weight decay"""
    batch_size: int = Field(16, ge=1)
    """texts per step (before accumulation)"""
    grad_accum: int = Field(1, ge=1)
    """steps whose gradients are summed before one update"""
    max_grad_norm: float = Field(1.0, gt=0)
    """the gradient norm clipped to"""
    seed: Seed = 0
    """the seed of the initialisation, the order of the texts and dropout"""
    loss_on: Literal["all", "target"] = Field(
        "all", description="all: every token after the first; target: only the tokens of the second actor"
    )
    train_embeddings: bool = True
    """train the input embeddings and the unembedding too"""
    lora: LoraSettings | None = None
    """train a LoRA adapter through peft instead of every weight"""
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: fp32 on CPU, bf16 autocast on GPU")

    @model_validator(mode="after")
    def _lora_trains_no_embeddings(self) -> FinetuneConfig:
        if self.lora is not None and self.train_embeddings:
            # LoRA adapts the projections only; say so rather than ignore the flag.
            self.train_embeddings = False
        return self

    def hyperparameters(self) -> dict:
        return self.model_dump(mode="json")


def content_hash(base_fingerprint: str, dataset_hash: str, config: FinetuneConfig) -> str:
    """Names a checkpoint: the same base, data and hyperparameters give the same name."""
    blob = json.dumps(
        {
            "base": base_fingerprint,
            "data": dataset_hash,
            "config": config.hyperparameters(),
            "code": TRAINING_CODE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
