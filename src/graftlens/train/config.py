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

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rank: int = Field(16, ge=1, le=65_536)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    components: list[str] = Field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])


class FinetuneConfig(BaseModel):
    """Hyperparameters of a finetuning run. Unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    split: Literal["all", "A", "B"] = "all"
    epochs: int = Field(6, ge=1, le=10_000)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: Seed = 0
    loss_on: Literal["all", "target"] = Field(
        "all", description="all: every token after the first; target: only the tokens of the second actor"
    )
    train_embeddings: bool = True
    lora: LoraSettings | None = None
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
