"""Edge attribution patching (Syed et al. 2023): every edge of the head graph scored from one
forward and one backward pass, and the exact edge patching it approximates.

The graph's nodes are attention heads. An *edge* runs from a *sender* head ``(layer, head)``
to a *receiver*: the query, key or value input of a head in a later layer
(`Receiver`), or the logits. Patching an edge
means: run the clean input, but let the receiver alone read the residual stream as it would be
if the sender's output were the corrupted run's (every other reader, MLPs included, sees the
clean stream). The sender's *write* is what it adds to the residual stream,

    Δ_s = post_norm(o(z_clean with head s set to z_corrupted)) − post_norm(o(z_clean)),

(``o`` the output projection without its bias; ``post_norm`` the identity except in Gemma-2 and
OLMo-2), at every position. EAP estimates the change of the metric ``M`` (the target's mean
log-probability) by a first-order expansion at the clean run,

    score(s → r) = Σ_{prompt, position} Δ_s · ∂M/∂x_r,

where ``x_r`` is the residual stream as the receiver alone reads it: the gradient of ``M`` with
respect to the receiver's own q, k or v (one head's rows of the projection) pulled back through
the projection and the attention's input norm (a vector–Jacobian product per receiver head), or,
for the logits, the gradient at the last layer's output. With ``steps > 1`` the gradients are
averaged along the straight line from the corrupted to the clean input embeddings (EAP-IG,
Hanna et al. 2024).

Node scores are attribution patching of each head's output (``Δz · ∂M/∂z``): the first-order
estimate of patching the head's corrupted output everywhere.

Receivers of ``k``/``v`` under grouped-query attention are key/value heads. In OLMo-2 the q/k
norms act across heads, so one head's q rows reach every head's normalized query; both EAP and
exact edge patching follow the model there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.interventions.hooks import capture, edit
from graftlens.interventions.metrics import Metric, check_metric, logprob, per_prompt
from graftlens.interventions.paths import PathInputs, Receiver
from graftlens.interventions.points import Point, hook_site
from graftlens.models.arguments import checked
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.names import Head
from graftlens.models.run import run_logits

LOGITS = "logits"
EdgeReceiver = Receiver | Literal["logits"]
RECEIVER_POINTS = ("q", "k", "v")
WRITES_BUDGET = 256 * 2**20  # bytes of head writes held at once: longer batches are attributed in chunks of prompts


class EdgeAttributionError(InterventionError):
    """Clean and corrupted inputs that do not align, or an edge the model does not have."""


@dataclass(frozen=True)
class EdgeScores:
    """EAP scores of every edge, and attribution-patching scores of every head.

    ``scores[s, r]`` estimates the change of the metric (mean target log-probability) when edge
    ``senders[s] → receivers[r]`` is patched from the corrupted run; edges that do not exist
    (a receiver at or before its sender's layer) are 0 and False in ``valid``.

    Args:
        senders: the sending heads ``(layer, head)``, in the order of ``scores``' rows.
        receivers: the receivers (`Receiver` or ``"logits"``), in the order of its columns.
        scores: ``[sender, receiver]`` edge scores.
        node_scores: ``[layer, head]`` attribution-patching score of each head.
        n_kv_groups: query heads per key/value head (1 without grouped-query attention).

    Examples:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> clean, corrupted = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 9, 7, 8]])
        >>> inputs = graftlens.PathInputs(clean, corrupted)
        >>> eap = graftlens.edge_attribution(m, inputs, torch.tensor([3]))
        >>> # 16 sender heads; 4 layers × (4 q + 2 k + 2 v) receivers and the logits
        >>> eap.scores.shape
        torch.Size([16, 33])
        >>> len(eap.top_edges(5)), len(eap.heads_by_edges()) <= 16
        (5, True)
    """

    senders: tuple[Head, ...]
    receivers: tuple[EdgeReceiver, ...]
    scores: torch.Tensor  # [sender, receiver]
    node_scores: torch.Tensor  # [layer, head]
    n_kv_groups: int  # query heads per key/value head

    @property
    def valid(self) -> torch.Tensor:
        """``BoolTensor[sender, receiver]``: the edges the model has."""
        out = torch.zeros(self.scores.shape, dtype=torch.bool)
        for j, r in enumerate(self.receivers):
            for i, (layer, _) in enumerate(self.senders):
                out[i, j] = r == LOGITS or layer < r.layer
        return out

    def top_edges(self, k: int, by: Literal["abs", "negative"] = "abs") -> list[tuple[Head, EdgeReceiver, float]]:
        """The ``k`` edges ranked first: by absolute score (Syed et al.), or most negative first
        (the edges whose corrupted value hurts the target most, as path patching ranks heads)."""
        valid = self.valid
        n = int(valid.sum())
        if not 0 <= k <= n:
            raise EdgeAttributionError(f"cannot pick {k} edges among {n}")
        key = self.scores.abs() if by == "abs" else -self.scores
        key = key.masked_fill(~valid, float("-inf")).flatten()
        order = torch.argsort(key, descending=True, stable=True)[:k].tolist()
        n_r = len(self.receivers)
        return [(self.senders[i // n_r], self.receivers[i % n_r], float(self.scores.flatten()[i])) for i in order]

    def heads_by_edges(self, by: Literal["abs", "negative"] = "abs") -> list[Head]:
        """Every head in the order the edge ranking first reaches it: an edge brings its sender,
        and its receiver's head (a key/value receiver, every query head reading that KV head)."""
        seen: dict[Head, None] = {}
        for sender, receiver, _ in self.top_edges(int(self.valid.sum()), by):
            seen.setdefault(sender, None)
            if receiver == LOGITS:
                continue
            if receiver.point == "q":
                seen.setdefault((receiver.layer, receiver.head), None)
            else:
                for h in range(receiver.head * self.n_kv_groups, (receiver.head + 1) * self.n_kv_groups):
                    seen.setdefault((receiver.layer, h), None)
        n_layers, n_heads = self.node_scores.shape
        rest = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in seen]
        return [*seen, *rest]

    def heads_by_nodes(self, by: Literal["abs", "negative"] = "abs") -> list[Head]:
        """Every head ranked by its node score (absolute, or most negative first)."""
        n_heads = self.node_scores.shape[1]
        key = self.node_scores.abs() if by == "abs" else -self.node_scores
        order = torch.argsort(key.flatten(), descending=True, stable=True).tolist()
        return [(i // n_heads, i % n_heads) for i in order]


def _check_aligned(inputs: PathInputs) -> None:
    clean_mask, corrupted_mask = inputs.masks
    if inputs.clean_ids.shape != inputs.corrupted_ids.shape or not torch.equal(clean_mask, corrupted_mask):
        raise EdgeAttributionError(
            "edge attribution compares the clean and corrupted runs position by position: they need the same shape "
            f"and padding (clean {tuple(inputs.clean_ids.shape)}, corrupted {tuple(inputs.corrupted_ids.shape)})"
        )


def _layer_module(loaded: LoadedModel, layer: int, path: str | None) -> nn.Module | None:
    if path is None:
        return None
    return loaded.model.get_submodule(f"{loaded.adapter.family.layers}.{layer}.{path}")


def head_writes(loaded: LoadedModel, layer: int, z_clean: torch.Tensor, z_corrupted: torch.Tensor, scale: float = 1.0):
    """``[head, batch, pos, d_model]``: what each head of ``layer`` changes in the residual stream
    when its output moves from ``z_clean`` to ``z_clean + scale · (z_corrupted − z_clean)``
    (``[batch, pos, head, d_head]`` each), every other head clean."""
    a = loaded.adapter
    o_proj = loaded.model.get_submodule(a.sites("o", layer)[0].path)
    out_norm = _layer_module(loaded, layer, a.family.attn_out_norm)
    delta = (z_corrupted - z_clean) * scale  # [batch, pos, head, d_head]
    n_heads = delta.shape[2]
    one_head = torch.zeros(n_heads, *delta.shape, dtype=delta.dtype, device=delta.device)  # [head, batch, pos, head, d_head]
    for h in range(n_heads):
        one_head[h, :, :, h] = delta[:, :, h]
    if out_norm is None:  # linear: the head's own term of o(z), without the bias
        return o_proj(one_head.flatten(-2)) - o_proj(torch.zeros_like(one_head[0].flatten(-2)))
    clean_out = o_proj(z_clean.flatten(-2))  # [batch, pos, d_model]
    return out_norm(o_proj((z_clean + one_head).flatten(-2))) - out_norm(clean_out)


def receiver_input(loaded: LoadedModel, layer: int, resid: torch.Tensor) -> torch.Tensor:
    """The attention of ``layer``'s input projections' output (q, k and v rows, fused or not, as
    ``{point: [batch, pos, head, d_head]}``) computed from the residual stream ``resid``."""
    a = loaded.adapter
    in_norm = _layer_module(loaded, layer, a.family.attn_in_norm)
    x = in_norm(resid) if in_norm is not None else resid
    out = {}
    for name in RECEIVER_POINTS:
        site = hook_site(a, Point(name, layer))
        out[name] = site.read(loaded.model.get_submodule(site.path)(x))
    return out


def _exact(dtype: torch.dtype) -> torch.dtype:
    """Where scores are summed: float32, or float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)


def _metric(logits: torch.Tensor, target_ids: torch.Tensor, metric: Metric = logprob) -> torch.Tensor:
    """The mean over prompts of ``metric`` (the target's log-probability), from last-position
    logits, in float64."""
    return per_prompt(metric, logits.double(), target_ids, "edge_attribution").mean()


def _gradients(loaded: LoadedModel, inputs: PathInputs, target_ids: torch.Tensor, steps: int, metric: Metric = logprob):
    """The clean run's activations and ``∂M/∂`` every head point and the last layer's output,
    averaged over ``steps`` points from the corrupted to the clean embeddings (1: the clean run)."""
    a = loaded.adapter
    last = Point("resid_post", a.n_layers - 1)
    points = [Point(name, layer) for layer in range(a.n_layers) for name in ("z", *RECEIVER_POINTS)] + [last]
    wanted = [Point(n, layer) for layer in range(a.n_layers) for n in ("resid_pre", "z")]
    with capture(loaded, wanted) as clean, torch.no_grad():
        run_logits(loaded, inputs.clean_ids, inputs.clean_mask, last_only=True)
    corrupted_embeds = None
    embed = loaded.model.get_submodule(a.sites("embed")[0].path)
    if steps > 1:
        held = {}
        handle = embed.register_forward_hook(lambda m, i, o: held.__setitem__("e", o.detach()))
        try:
            run_logits(loaded, inputs.corrupted_ids, inputs.corrupted_mask, last_only=True)
        finally:
            handle.remove()
        corrupted_embeds = held["e"]
    grads: dict[Point, torch.Tensor] = {}
    for step in range(1, steps + 1):
        alpha = step / steps
        recorded: dict[Point, torch.Tensor] = {}

        def keep(point: Point):
            def fn(x: torch.Tensor) -> torch.Tensor:
                y = x.clone()
                recorded[point] = y
                return y

            return fn

        handle = None
        if corrupted_embeds is not None:
            handle = embed.register_forward_hook(lambda m, i, o, al=alpha: corrupted_embeds + al * (o - corrupted_embeds))
        try:
            with edit(loaded, {p: keep(p) for p in points}):
                logits = run_logits(loaded, inputs.clean_ids, inputs.clean_mask, last_only=True, grad=True)[:, -1]
                value = _metric(logits, target_ids, metric)
                if not value.requires_grad:
                    raise EdgeAttributionError("edge_attribution: the metric has no gradient (rank is not differentiable)")
                got = torch.autograd.grad(value, [recorded[p] for p in points], allow_unused=True)
        finally:
            if handle is not None:
                handle.remove()
        for p, g in zip(points, got, strict=True):
            g = torch.zeros_like(recorded[p]) if g is None else g.detach()
            grads[p] = g / steps if p not in grads else grads[p] + g / steps
    return clean, grads


@checked
def edge_attribution(
    model: LoadedModel | nn.Module,
    inputs: PathInputs,
    target_ids: torch.Tensor,
    *,
    steps: int = 1,
    metric: Metric = logprob,
) -> EdgeScores:
    """EAP scores of every head → head (q, k, v) and head → logits edge, and node scores.

    Args:
        model: the model attributed.
        inputs: clean and corrupted prompts of the same shape and padding, position by position
            (`PathInputs`, or a ``(clean, corrupted)`` pair of `Prompts` whose clean targets fill
            ``target_ids``).
        target_ids: ``LongTensor[batch]``, the answer whose log-probability is the metric.
        steps: 1 for EAP (gradients at the clean run); more for EAP-IG, the gradients averaged
            over ``steps`` points from the corrupted to the clean input embeddings.
        metric: what the scores estimate the change of, a differentiable function of the
            last-position logits and the targets (`metrics`:
            ``logprob`` by default, ``prob``, ``logit_diff(foil_ids)``).

    Returns:
        EdgeScores: a sum over positions, a mean over prompts; rank edges with
        ``top_edges(k)``, heads with ``heads_by_edges()`` or ``heads_by_nodes()``.

    Examples:
        A circuit of the heads the strongest edges reach:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("gpt2")
        >>> clean = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        >>> inputs = graftlens.PathInputs(clean, torch.tensor([[5, 13, 7, 8], [9, 14, 11, 12]]))
        >>> eap = graftlens.edge_attribution(m, inputs, torch.tensor([3, 4]))
        >>> sender, receiver, score = eap.top_edges(1)[0]
        >>> sender[0] < (receiver.layer if receiver != "logits" else 4)
        True
    """
    loaded = as_loaded(model)
    a = loaded.adapter
    _check_aligned(inputs)
    if not isinstance(steps, int) or steps < 1:
        raise EdgeAttributionError(f"steps must be a positive integer, not {steps!r}")
    check_metric("edge_attribution", metric)
    senders = tuple((layer, h) for layer in range(a.n_layers) for h in range(a.n_heads))
    receivers: list[EdgeReceiver] = []
    for layer in range(a.n_layers):
        for name in RECEIVER_POINTS:
            receivers += [Receiver(name, layer, h) for h in range(a.n_heads if name == "q" else a.n_kv_heads)]
    receivers.append(LOGITS)
    scores = torch.zeros(len(senders), len(receivers), dtype=torch.float64)
    node_scores = torch.zeros(a.n_layers, a.n_heads, dtype=torch.float64)
    batch, width = inputs.clean_ids.shape
    per_row = a.n_layers * a.n_heads * width * a.d_model * 4  # bytes of one prompt's head writes
    chunk = max(1, WRITES_BUDGET // per_row)
    for start in range(0, batch, chunk):  # the metric is a mean over prompts: chunks add up weighted
        rows = torch.arange(start, min(batch, start + chunk))
        part, nodes = _attribute(loaded, inputs.select(rows), target_ids[rows.to(target_ids.device)], steps, metric=metric)
        scores += part * (len(rows) / batch)
        node_scores += nodes * (len(rows) / batch)
    return EdgeScores(senders, tuple(receivers), scores, node_scores, a.n_heads // a.n_kv_heads)


def _attribute(
    loaded: LoadedModel, inputs: PathInputs, target_ids: torch.Tensor, steps: int, scale: float = 1.0, metric: Metric = logprob
):
    """``(scores [sender, receiver], node scores [layer, head])`` of one chunk of prompts; the
    senders' writes are those of outputs moved ``scale`` of the way to the corrupted run's (the
    tests compare small scales with exact edge patching, where a post-norm write is not linear)."""
    a = loaded.adapter
    clean_mask, _ = inputs.masks
    real = clean_mask.bool()[:, :, None]  # [batch, pos, 1]: padding writes nothing
    z_points = [Point("z", layer) for layer in range(a.n_layers)]
    with capture(loaded, z_points) as corrupted, torch.no_grad():
        run_logits(loaded, inputs.corrupted_ids, inputs.corrupted_mask, last_only=True)
    clean, grads = _gradients(loaded, inputs, target_ids, steps, metric)
    grads = {p: torch.where(real.view(*real.shape[:2], *[1] * (g.dim() - 2)), g, 0.0) for p, g in grads.items()}

    n_receivers = a.n_layers * (a.n_heads + 2 * a.n_kv_heads) + 1
    scores = torch.zeros(a.n_layers * a.n_heads, n_receivers, dtype=torch.float64)
    node_scores = torch.zeros(a.n_layers, a.n_heads, dtype=torch.float64)

    with torch.no_grad():
        writes = []  # per layer: [head, batch·pos·d_model]
        for layer in range(a.n_layers):
            zc, zx = clean[Point("z", layer)], corrupted[Point("z", layer)]
            delta_z = torch.where(real[..., None], zx - zc, 0.0)
            node_scores[layer] = (delta_z * grads[Point("z", layer)]).to(_exact(zc.dtype)).sum((0, 1, 3)).cpu()
            w = torch.where(real, head_writes(loaded, layer, zc, zx, scale), 0.0)  # [head, batch, pos, d_model]
            writes.append(w.flatten(1).to(_exact(w.dtype)))
    column = 0
    for layer in range(a.n_layers):
        pulled = _pulled_back(loaded, layer, clean[Point("resid_pre", layer)], grads)  # [receiver, batch·pos·d_model]
        if layer > 0:
            scores[: layer * a.n_heads, column : column + len(pulled)] = (torch.cat(writes[:layer]) @ pulled.T).cpu()
        column += len(pulled)
    final = grads[Point("resid_post", a.n_layers - 1)].flatten()
    final = final.to(_exact(final.dtype))  # [batch·pos·d_model]
    scores[:, -1] = (torch.cat(writes) @ final).cpu()
    return scores, node_scores


def _pulled_back(loaded: LoadedModel, layer: int, resid: torch.Tensor, grads) -> torch.Tensor:
    """``[receiver, batch·pos·d_model]``: ∂M/∂ the residual stream as each q, k, v head of
    ``layer`` alone reads it (a vector–Jacobian product through its projection rows and the norm)."""
    x = resid.detach().requires_grad_(True)
    with torch.enable_grad():
        heads_in = receiver_input(loaded, layer, x)
        rows = []
        for name in RECEIVER_POINTS:
            g = grads[Point(name, layer)]  # [batch, pos, head, d_head]
            for h in range(g.shape[2]):
                (pulled,) = torch.autograd.grad(heads_in[name][:, :, h], x, g[:, :, h], retain_graph=True)
                rows.append(pulled.flatten().to(_exact(pulled.dtype)))
    return torch.stack(rows)


@checked
def edge_patched_logits(
    model: LoadedModel | nn.Module,
    inputs: PathInputs,
    sender: Head,
    receiver: EdgeReceiver,
    *,
    scale: float = 1.0,
) -> torch.Tensor:
    """Last-position logits ``[batch, vocab]`` of the clean run with one edge patched exactly:
    ``receiver`` alone reads the residual stream plus the sender's write when its output moves
    ``scale`` of the way to the corrupted run's (1: the corrupted value), at every position.

    This is what `edge_attribution` estimates to first order: ``scale → 0`` gives
    ``scale · score`` (see the module docstring).

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        inputs: the clean and the corrupted prompts (`PathInputs`), or a ``(clean, corrupted)``
            pair of `Prompts`.
        sender: the sending head, ``(layer, head)``.
        receiver: a later head's input (`Receiver`) or ``"logits"``.
        scale: how far the sender's output moves towards the corrupted run's (1: all the way).

    Examples:
        A receiver before its sender sees nothing:
        >>> import torch, graftlens
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("llama")
        >>> clean, corrupted = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 9, 7, 8]])
        >>> inputs = graftlens.PathInputs(clean, corrupted)
        >>> receiver = graftlens.Receiver("v", 3, 0)
        >>> patched = graftlens.edge_patched_logits(m, inputs, (2, 1), receiver)
        >>> patched.shape
        torch.Size([1, 96])
    """
    loaded = as_loaded(model)
    _check_edge(loaded.adapter, sender, receiver)
    layer = sender[0]
    return ExactEdges(loaded, inputs, layers=[layer, receiver.layer if receiver != LOGITS else None]).logits(
        sender, receiver, scale
    )


def _check_edge(a, sender: Head, receiver: EdgeReceiver) -> None:
    layer, head = sender
    if not (0 <= layer < a.n_layers and 0 <= head < a.n_heads):
        raise EdgeAttributionError(f"sender {sender}: no such head (layers 0..{a.n_layers - 1}, heads 0..{a.n_heads - 1})")
    if receiver != LOGITS:
        n = a.n_heads if receiver.point == "q" else a.n_kv_heads
        if receiver.point not in RECEIVER_POINTS or not (layer < receiver.layer < a.n_layers and 0 <= receiver.head < n):
            raise EdgeAttributionError(
                f"edge {layer}.{head} → {receiver}: a receiver is a q, k or v head of a later layer (of {a.n_layers})"
            )


class ExactEdges:
    """Exact edge patching of many edges on one batch: the clean and corrupted runs are made once
    (their head outputs, and the residual stream entering each receiver layer), then each edge
    costs one patched run. ``layers``: the layers whose activations to keep (None: all)."""

    def __init__(self, model: LoadedModel | nn.Module, inputs: PathInputs, layers: Sequence[int | None] | None = None):
        self.loaded = as_loaded(model)
        _check_aligned(inputs)
        self.inputs = inputs
        n = self.loaded.adapter.n_layers
        kept = range(n) if layers is None else sorted({x for x in layers if x is not None})
        self.real = inputs.masks[0].bool()[:, :, None]  # [batch, pos, 1]
        with capture(self.loaded, [Point(p, x) for x in kept for p in ("z", "resid_pre")]) as self.clean, torch.no_grad():
            self.clean_logits = run_logits(self.loaded, inputs.clean_ids, inputs.clean_mask, last_only=True)[:, -1]
        with capture(self.loaded, [Point("z", x) for x in kept]) as self.corrupted, torch.no_grad():
            run_logits(self.loaded, inputs.corrupted_ids, inputs.corrupted_mask, last_only=True)

    def logits(self, sender: Head, receiver: EdgeReceiver, scale: float = 1.0) -> torch.Tensor:
        """Last-position logits ``[batch, vocab]`` with the edge patched (see `edge_patched_logits`)."""
        loaded, a = self.loaded, self.loaded.adapter
        _check_edge(a, sender, receiver)
        layer, head = sender
        if Point("z", layer) not in self.clean or (receiver != LOGITS and Point("resid_pre", receiver.layer) not in self.clean):
            raise EdgeAttributionError(f"edge {sender} → {receiver}: its layers' activations were not kept (layers=...)")
        with torch.no_grad():
            zc = self.clean[Point("z", layer)]
            write = torch.where(self.real, head_writes(loaded, layer, zc, self.corrupted[Point("z", layer)], scale)[head], 0.0)
            if receiver == LOGITS:
                edits = {Point("resid_post", a.n_layers - 1): lambda x: x + write.to(x.dtype)}
            else:
                resid = self.clean[Point("resid_pre", receiver.layer)]
                value = receiver_input(loaded, receiver.layer, resid + write)[receiver.point]

                def swap(x: torch.Tensor) -> torch.Tensor:  # [batch, pos, head, d_head]
                    out = x.clone()
                    out[:, :, receiver.head] = value[:, :, receiver.head].to(x.dtype)
                    return out

                edits = {Point(receiver.point, receiver.layer): swap}
            with edit(loaded, edits):
                return run_logits(loaded, self.inputs.clean_ids, self.inputs.clean_mask, last_only=True)[:, -1]

    def effect(self, target_ids: torch.Tensor, sender: Head, receiver: EdgeReceiver, scale: float = 1.0) -> float:
        """The change of the metric (mean target log-probability) when the edge is patched:
        what `edge_attribution`'s score of that edge estimates."""
        patched = self.logits(sender, receiver, scale)
        return float(_metric(patched, target_ids) - _metric(self.clean_logits, target_ids))


def edge_effect(
    model: LoadedModel | nn.Module,
    inputs: PathInputs,
    target_ids: torch.Tensor,
    sender: Head,
    receiver: EdgeReceiver,
    scale: float = 1.0,
) -> float:
    """The change of the metric (mean target log-probability) when one edge is patched exactly
    (`edge_patched_logits`): what ``edge_attribution``'s score of that edge estimates.
    Many edges of one batch: `ExactEdges` makes the clean and corrupted runs once."""
    layers = [sender[0], receiver.layer if receiver != LOGITS else None]
    return ExactEdges(model, inputs, layers).effect(target_ids, sender, receiver, scale)


def rank_correlation(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Spearman's rank correlation of two equally long sequences (ties ranked by order)."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    rx = torch.empty_like(x).scatter_(0, torch.argsort(x, stable=True), torch.arange(len(x), dtype=torch.float64))
    ry = torch.empty_like(y).scatter_(0, torch.argsort(y, stable=True), torch.arange(len(y), dtype=torch.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))
