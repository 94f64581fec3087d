"""Many grafting configurations on one batch, at recipe speed.

`graft_sweep` is what the recipes' grafting sweeps do, as a library call: configurations
whose rules first claim the same column share one plain prefix of the columns before it (the
recipient's own computation, the same for all of them), and continue it together, as variants of
one pass, each variant grafting its own rows. The donors' weights are read once per pass instead
of once per configuration. A configuration that claims the first column runs alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from graftlens.graft.donors import DonorLike
from graftlens.graft.engine import Grafter, grafting
from graftlens.graft.heads import HeadGraft, expand_head_grafts
from graftlens.graft.prefix import SharedPrefix, prefix_cut, variant_rules
from graftlens.graft.rules import Graft, touched_modules
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.prefix import VARIANT_ROWS
from graftlens.models.run import check_batch, run_logits
from graftlens.positions import Selector, Spans


@checked
def graft_sweep(
    recipient: LoadedModel | nn.Module,
    donors: Mapping[str, DonorLike],
    configs: Mapping[str, Sequence[Graft | HeadGraft]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    spans: Sequence[Spans] | None = None,
) -> dict[str, torch.Tensor]:
    """Last-position logits of ``recipient`` under each configuration of graft rules.

    Args:
        recipient: the model grafted into (a `LoadedModel` or HF model).
        donors: donor name → model, checkpoint directory or loaded weights, as for `grafting`.
        configs: configuration name → its graft rules (``[]``: the recipient as it is).
        input_ids: ``LongTensor[batch, pos]``, left-padded (a right-padded batch is refused: the
            sweep reads each prompt's last token in the last column).
        attention_mask: ``[batch, pos]``; None means no padding.
        spans: per example, named spans (``FE``, ...) that the rules' selectors name.

    Returns:
        configuration name → logits ``[batch, vocab]`` at each prompt's last position, equal to
        ``grafted_forward(...)[:, -1]`` for that configuration's rules (to float rounding).

    Examples:
        >>> import graftlens, torch
        >>> from graftlens import Graft
        >>> from graftlens.models import tiny_model
        >>> recipient, ft = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
        >>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        >>> configs = {
        ...     "PRE": [],
        ...     "LT mlp": [Graft("ft", "mlp", "all", "LT")],
        ...     "LT attn": [Graft("ft", "attn", "half2", "LT")],
        ... }
        >>> out = graftlens.graft_sweep(recipient, {"ft": ft}, configs, ids)
        >>> out["LT mlp"].shape
        torch.Size([2, 96])
    """
    loaded = as_loaded(recipient)
    check_batch(input_ids, attention_mask, spans)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    input_ids, mask = input_ids.to(loaded.device), mask.to(loaded.device)
    head_paths = {s.path for s in loaded.adapter.sites("lm_head")}
    # Head grafts become rules of spliced donors, one set per configuration.
    expanded: dict[str, list[Graft]] = {}
    all_donors: dict[str, DonorLike] = dict(donors)
    for name, rules in configs.items():
        expanded[name], with_spliced = expand_head_grafts(loaded, donors, list(rules), tag=f" of {name!r}")
        all_donors.update(with_spliced)
    configs, donors = expanded, all_donors

    cuts: dict[str, int] = {}  # configuration → where its shared prefix ends (0: it runs alone)
    for name, rules in configs.items():
        rules = list(rules)
        shareable = all(isinstance(g.positions, (str, Selector)) for g in rules)  # variants need selectors
        grafts_head = bool(head_paths & set(touched_modules(loaded.adapter, rules)))
        cuts[name] = prefix_cut(rules, mask, spans, grafts_head) if shareable else 0

    out: dict[str, torch.Tensor] = {}
    for name, cut in cuts.items():
        if cut == 0:
            with grafting(loaded, donors, list(configs[name]), spans):
                out[name] = run_logits(loaded, input_ids, mask, last_only=True)[:, -1]
    per_pass = max(1, VARIANT_ROWS // input_ids.shape[0])
    for cut in sorted({c for c in cuts.values() if c > 0}):
        names = [n for n, c in cuts.items() if c == cut]
        prefix = SharedPrefix(loaded, input_ids, mask, cut)  # the recipient's own columns [0, cut)
        for start in range(0, len(names), per_pass):
            chunk = names[start : start + per_pass]
            rules = variant_rules([list(configs[n]) for n in chunk])
            repeated = None if spans is None else [s for s in spans for _ in chunk]
            with Grafter(loaded, donors, rules).on(repeated):
                logits, _ = prefix.continued_variants(len(chunk))  # [batch, variants, vocab]
            out.update({n: logits[:, v] for v, n in enumerate(chunk)})
    return {name: out[name] for name in configs}
