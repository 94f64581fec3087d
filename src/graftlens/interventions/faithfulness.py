"""Faithfulness curves: a circuit's faithfulness as it grows along a ranking of heads, beside
random circuits of the same size.

At size ``k`` the circuit is the first ``k`` heads of the ranking (from edge attribution,
`heads_by_edges`, or any order),
kept at ``positions``; every other head is mean-ablated (`mean_ablated_logits`).
Faithfulness is the circuit's top-1 accuracy over the full model's.
"""

from __future__ import annotations

import random as _random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from graftlens.interventions.circuits import Circuit, CircuitError, HeadGroup, accuracy, mean_ablated_logits
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.names import Head
from graftlens.models.run import run_logits
from graftlens.positions import Spans


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Faithfulness at each size: the ranked circuit's, and each random circuit's (``random[i]``
    holds the ``i``-th size's draws); ``full`` is the full model's accuracy.

    Args:
        sizes: circuit sizes, in heads.
        circuit: the ranked circuit's faithfulness at each size.
        random: per size, each random circuit's faithfulness.
        full: the full model's accuracy.

    Examples:
        >>> from graftlens import FaithfulnessCurve
        >>> random = ((0.0, 0.1), (0.2, 0.0))  # two draws at each size
        >>> curve = FaithfulnessCurve((5, 10), circuit=(0.4, 0.9), random=random, full=0.8)
        >>> tuple(sum(draws) / len(draws) for draws in curve.random)  # mean per size
        (0.05, 0.1)
    """

    sizes: tuple[int, ...]
    circuit: tuple[float, ...]
    random: tuple[tuple[float, ...], ...]
    full: float


def top_circuit(ranking: Sequence[Head], k: int, positions: str = "all") -> Circuit:
    """The first ``k`` heads of ``ranking`` as one group kept at ``positions``."""
    if not 0 < k <= len(ranking):
        raise CircuitError(f"a circuit of {k} heads from a ranking of {len(ranking)}")
    return Circuit({"heads": HeadGroup(tuple(ranking[:k]), positions)})


def random_heads(n_layers: int, n_heads: int, k: int, seed: int, positions: str = "all") -> Circuit:
    """``k`` heads drawn uniformly without replacement, as one group kept at ``positions``."""
    everything = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    if not 0 < k <= len(everything):
        raise CircuitError(f"a random circuit of {k} heads; the model has {len(everything)}")
    return Circuit({"heads": HeadGroup(tuple(sorted(_random.Random(seed).sample(everything, k))), positions)})


@checked
def faithfulness_curve(
    model: LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    target_ids: torch.Tensor,
    ranking: Sequence[Head],
    sizes: Sequence[int],
    means: Mapping[int, torch.Tensor],
    *,
    positions: str = "all",
    random: int = 5,
    seed: int = 0,
    spans: Sequence[Spans] | None = None,
) -> FaithfulnessCurve:
    """Faithfulness of the first ``k`` heads of ``ranking`` for each ``k`` in ``sizes``, and of
    ``random`` random circuits of each size (seeds ``seed``, ``seed + 1``, ...).

    Args:
        model: the model whose heads are ablated.
        input_ids: ``LongTensor[batch, pos]``, the prompts (all of the length ``means`` were taken at).
        attention_mask: ``LongTensor[batch, pos]`` or None (no padding).
        target_ids: ``LongTensor[batch]``, the answers.
        ranking: heads ``(layer, head)``, most important first.
        sizes: circuit sizes, in heads.
        means: every head's mean output per position (`head_means`).
        positions: where the circuit's heads are kept (a selector); elsewhere they are ablated too.
        random: random circuits per size.
        seed: the first random circuit's seed (the next ones count up from it).
        spans: span annotations, for selectors that name spans.

    Examples:
        The whole model as its own circuit is faithful:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> from graftlens.interventions.faithfulness import faithfulness_curve
        >>> m = tiny_model("llama")
        >>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        >>> target = graftlens.run_logits(m, ids)[:, -1].argmax(-1)
        >>> means = graftlens.head_means(m, [(ids, None)])
        >>> ranking = [(layer, h) for layer in range(4) for h in range(4)]
        >>> curve = faithfulness_curve(m, ids, None, target, ranking, [4, 16], means, random=2)
        >>> curve.full, curve.circuit[-1], len(curve.random[0])
        (1.0, 1.0, 2)
    """
    loaded = as_loaded(model)
    a = loaded.adapter
    full = accuracy(run_logits(loaded, input_ids, attention_mask, last_only=True)[:, -1], target_ids)
    if full == 0:
        raise CircuitError("the full model gets no prompt right: faithfulness (accuracy over the full model's) is undefined")

    def faithfulness(circuit: Circuit) -> float:
        logits = mean_ablated_logits(loaded, input_ids, attention_mask, circuit, means, spans)
        return accuracy(logits, target_ids) / full

    found, drawn = [], []
    for k in sizes:
        found.append(faithfulness(top_circuit(ranking, k, positions)))
        drawn.append(tuple(faithfulness(random_heads(a.n_layers, a.n_heads, k, seed + i, positions)) for i in range(random)))
    return FaithfulnessCurve(tuple(sizes), tuple(found), tuple(drawn), full)
