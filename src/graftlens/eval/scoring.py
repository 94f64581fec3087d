"""Next-token metrics of a model on a prompt set: target probability, rank, top-k hits.

The model is anything that maps a `Prompts` to last-position logits ``[batch,
vocab]``; `plain_last_logits` is the plain model, and the methods in
`graftlens.methods` pass their own. All metrics are of the first target token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from graftlens.data.prompts import TokenizedPrompt
from graftlens.eval.batching import ForcedTargets, Prompts, batches
from graftlens.models.run import run_logits


@dataclass
class Readout:
    """What a readout gives for one batch: the last prompt position's logits, and where the method
    measures them, each target's whole log-probability and a greedy continuation."""

    logits: torch.Tensor  # [batch, vocab]: the last prompt position
    target_logprob: torch.Tensor | None = None  # [batch]: Σ log p(target tokens), teacher-forced
    continuation: torch.Tensor | None = None  # LongTensor[batch, n]: greedy tokens after the prompt

    @classmethod
    def of(cls, out: torch.Tensor | Readout) -> Readout:
        return out if isinstance(out, Readout) else cls(out)


# A method's readout: a batch → its last-position logits ``[batch, vocab]``, or a `Readout`.
LastLogits = Callable[[Prompts], "torch.Tensor | Readout"]

DEFAULT_TOPK = (1, 5, 10)


@dataclass(frozen=True)
class PromptScore:
    id: str
    target_prob: float
    target_rank: int  # 1 = the model's top prediction
    top_token_ids: tuple[int, ...]  # the model's top predictions, best first

    def hit(self, k: int) -> bool:
        return self.target_rank <= k


def plain_last_logits(model: torch.nn.Module) -> LastLogits:
    """Last-position logits of the plain model (left-padded batches)."""

    def run(batch: Prompts) -> torch.Tensor:
        return run_logits(model, batch.input_ids, batch.attention_mask, last_only=True)[:, -1]

    return run


def score_logits(logits: torch.Tensor, prompts: Sequence[TokenizedPrompt], keep_top: int = 10) -> list[PromptScore]:
    """Scores from last-position ``logits[batch, vocab]`` of ``prompts`` (same order)."""
    logits = logits.float()
    targets = torch.tensor([p.target_id for p in prompts], device=logits.device)
    probs = logits.softmax(-1)  # [batch, vocab]
    target_logit = logits.gather(1, targets[:, None])  # [batch, 1]
    ranks = (logits > target_logit).sum(-1) + 1  # [batch]; ties count in the target's favour
    target_probs = probs.gather(1, targets[:, None])[:, 0]
    top = logits.topk(keep_top, dim=-1).indices.tolist()
    return [
        PromptScore(p.id, float(tp), int(r), tuple(t)) for p, tp, r, t in zip(prompts, target_probs.tolist(), ranks.tolist(), top)
    ]


def target_logprob(logits: torch.Tensor, forced: ForcedTargets) -> torch.Tensor:
    """``[batch]``: each target's log-probability as a whole, Σ_j log p(target_j | prompt,
    target_<j), from the logits ``[batch, n_target, vocab]`` of a forced batch's last columns."""
    logprobs = logits.float().log_softmax(-1).gather(2, forced.target_ids[:, :, None])[:, :, 0]  # [batch, n_target]
    return torch.where(forced.target_mask, logprobs, torch.zeros_like(logprobs)).sum(-1)


def attribute_rate(logits: torch.Tensor, attributes: Sequence[frozenset[int]], k: int = 50) -> list[float]:
    """Geva et al.'s attribute rate of each row of ``logits[batch, vocab]``: the share of its
    top-``k`` tokens that are in that row's attribute set."""
    top = logits.float().topk(k, dim=-1).indices.tolist()  # [batch, k]
    return [sum(t in attrs for t in row) / k for row, attrs in zip(top, attributes)]


@torch.no_grad()
def evaluate(
    model_or_fn: torch.nn.Module | LastLogits,
    prompts: Sequence[TokenizedPrompt],
    pad_id: int,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> list[PromptScore]:
    """Score every prompt (results in the order of ``prompts``), batched by length."""
    fn = plain_last_logits(model_or_fn) if isinstance(model_or_fn, torch.nn.Module) else model_or_fn
    device = _device_of(model_or_fn)
    by_id: dict[str, PromptScore] = {}
    for batch in batches(prompts, batch_size, pad_id):
        logits = Readout.of(fn(batch.to(device) if device is not None else batch)).logits
        for s in score_logits(logits, batch.prompts):
            by_id[s.id] = s
        if progress is not None:
            progress(len(batch.prompts))
    return [by_id[p.id] for p in prompts]


def summarize(scores: Sequence[PromptScore], ks: Sequence[int] = DEFAULT_TOPK) -> dict[str, float]:
    """Mean target probability, mean rank and top-k accuracy of a list of scores."""
    n = len(scores)
    if n == 0:
        return {"n": 0}
    out: dict[str, float] = {"n": n}
    out["mean_prob"] = sum(s.target_prob for s in scores) / n
    out["mean_rank"] = sum(s.target_rank for s in scores) / n
    for k in ks:
        out[f"top{k}"] = sum(s.hit(k) for s in scores) / n
    return out


def _device_of(model_or_fn: object) -> torch.device | None:
    if isinstance(model_or_fn, torch.nn.Module):
        return next(model_or_fn.parameters()).device
    return None
