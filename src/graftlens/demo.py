"""``graftlens demo``: the main job on the embedded model, end to end.

It grows with the pipeline: today it loads the embedded model (converting it once), shows its
component map and its next-token predictions on well-known facts.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from graftlens.models import load_model

KNOWN_FACT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "The official language of Japan is",
    "Apple was founded by Steve",
)


@torch.no_grad()
def top_next_tokens(loaded, prompts: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-``k`` next tokens and probabilities after each prompt (batched, left padding)."""
    tok = loaded.tokenizer
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left").to(loaded.device)
    # Left padding: give real tokens positions 0..n-1 so results match unpadded prompts.
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = loaded.model(**batch, position_ids=position_ids).logits[:, -1]  # [batch, vocab]
    probs = logits.float().softmax(-1)
    top = probs.topk(k, dim=-1)
    return [[(tok.decode(int(i)), float(p)) for p, i in zip(row_p, row_i)] for row_p, row_i in zip(top.values, top.indices)]


def run_demo(spec: str, console: Console) -> None:
    t0 = time.perf_counter()
    with console.status(f"loading {spec} (the first run converts the embedded GGUF once, ~30 s) ..."):
        loaded = load_model(spec)
    a = loaded.adapter
    console.print(
        f"[bold]{spec}[/]: {type(loaded.model).__name__}, {loaded.n_params():,} parameters, "
        f"{a.n_layers} layers, {a.n_heads} heads ({a.n_kv_heads} KV), "
        f"tied embeddings: {'yes' if a.tied_embeddings else 'no'} — loaded in {time.perf_counter() - t0:.1f} s"
    )
    table = Table(title="next-token predictions on known facts", title_justify="left")
    table.add_column("prompt")
    table.add_column("top-5 next tokens (probability)")
    for prompt, top in zip(KNOWN_FACT_PROMPTS, top_next_tokens(loaded, list(KNOWN_FACT_PROMPTS))):
        table.add_row(prompt, "  ".join(f"{t!r} {p:.2f}" for t, p in top))
    console.print(table)
