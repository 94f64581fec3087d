"""Training a tuned lens (Belrose et al. 2023) on text the model writes itself, cached by content.

The text: ``samples`` sequences the model samples from its start token (seeded, temperature 1),
so no corpus is downloaded. (The shipped subject texts are not used: they define the attribute
sets the attribute rate counts, and a lens trained on them would be taught the answer.) The
first token of each sample is left out: its stream is an outlier on most models.

The fit, per translator ``T_d`` (the stream after ``d`` layers):

1. a ridge least-squares start: the affine map that best predicts the last layer's stream
   (before the final norm) from the stream after ``d`` layers;
2. ``steps`` Adam steps on Belrose et al.'s loss: the KL divergence from the model's final
   distribution to the translated stream's projection, averaged over depths and tokens.

Held-out samples (one in eight) measure each depth's KL under the logit lens and the tuned lens;
both go into the lens's manifest. A lens is cached under ``<cache>/lenses/<hash>``, the hash of
the model's fingerprint, the settings and this code's version: asking again loads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from graftlens.cache import cache_dir
from graftlens.configfiles import validation_message
from graftlens.interventions.tuned_lens import MANIFEST, TunedLens, TunedLensError
from graftlens.models.arguments import checked
from graftlens.models.fingerprint import legacy_fingerprints, model_fingerprint
from graftlens.models.loading import LoadedModel, as_loaded
from graftlens.models.run import frozen_parameters
from graftlens.train.finetuning import ProgressFn

LENS_CODE_VERSION = 1
HELD_OUT = 8  # one sample in HELD_OUT is held out to measure the lens
HELD_OUT_TOKENS = 256  # at most this many held-out tokens are scored (spread over the samples)

# ProgressFn (step, steps, loss): here the sampled tokens, then the KL steps (their loss)


class TunedLensSettings(BaseModel):
    """How a tuned lens is trained (every field is part of its cache key); fields by keyword.

    Attributes:
        samples: sequences the model samples to train on (one in 8 held out; at least 8).
        sample_length: tokens per sequence, the start token included.
        seed: the random seed of the sampling and of the batches.
        steps: KL-divergence steps after the least-squares start (0: the least-squares lens).
        batch_tokens: tokens per step (every depth reads them).
        lr: the learning rate of the KL steps.
        ridge: the least-squares start's ridge, relative to the mean feature power.

    Examples:
        >>> from graftlens import TunedLensSettings
        >>> settings = TunedLensSettings(samples=16, steps=20)  # the rest at their defaults
        >>> settings.sample_length, settings.lr
        (64, 0.0001)
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    samples: int = Field(64, ge=HELD_OUT)  # sequences the model samples (one in 8 held out)
    sample_length: int = Field(64, ge=2)  # tokens per sequence, the start token included
    seed: int = 0
    steps: int = Field(100, ge=0)  # KL steps after the least-squares start
    batch_tokens: int = Field(32, ge=1)  # tokens per step (every depth reads them)
    lr: float = Field(1e-4, gt=0)
    ridge: float = Field(1e-3, ge=0)  # of the least-squares start, relative to the mean feature power

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # one graftlens error naming the setting, as a recipe's would be
            raise TunedLensError(validation_message(exc, values, "TunedLensSettings")) from None


def lens_key(fingerprint: str, settings: TunedLensSettings) -> str:
    blob = json.dumps({"model": fingerprint, "settings": settings.model_dump(), "code": LENS_CODE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@checked
def tuned_lens(
    model: LoadedModel | torch.nn.Module,
    settings: TunedLensSettings | None = None,
    *,
    directory: Path | None = None,
    progress: ProgressFn | None = None,
) -> TunedLens:
    """The tuned lens of ``model``: loaded from the cache, or trained and cached.

    Args:
        model: a `LoadedModel` or an HF causal LM of a supported family.
        settings: how to train it (`TunedLensSettings`; default settings when None).
        directory: where to keep it (default: the graftlens cache, keyed by the model's fingerprint
            and the settings).
        progress: called as ``progress(step, steps, loss)`` while it trains.

    Examples:
        >>> from graftlens.models import tiny_model
        >>> from graftlens.train.tuned_lens import TunedLensSettings, tuned_lens
        >>> settings = TunedLensSettings(samples=8, sample_length=8, steps=2)
        >>> lens = tuned_lens(tiny_model("llama"), settings)
        >>> kl = lens.manifest["held_out_kl"]  # nats per depth, on held-out samples
        >>> len(lens.translators), all(t < logit for t, logit in zip(kl["tuned"], kl["logit"]))
        (4, True)
    """
    loaded = as_loaded(model)
    settings = settings or TunedLensSettings()
    fingerprint = model_fingerprint(loaded.model)
    key = lens_key(fingerprint, settings)
    final = directory or cache_dir() / "lenses" / key
    if directory is None:
        _remove_abandoned_work(final.parent)
        _adopt_legacy_lens(loaded, settings, final)
    if (final / MANIFEST).is_file():
        return TunedLens.load(final)
    lens, manifest = fit_tuned_lens(loaded, settings, progress)
    manifest.update(key=key, model=fingerprint, spec=loaded.spec)
    work = final.with_name(f"{final.name}.partial-{os.getpid()}")
    lens.save(work, manifest)
    try:
        os.replace(work, final)
    except OSError:  # another process finished the same lens first: keep its copy
        shutil.rmtree(work, ignore_errors=True)
    return TunedLens.load(final)


ABANDONED_AFTER_S = 3600.0  # a work folder this old whose process is gone is a killed run's


def _remove_abandoned_work(lenses: Path) -> None:
    """Remove the work folders (``<key>.partial-<pid>``) that killed trainings left: their
    process no longer runs here, and the folder is empty or was last written an hour ago (a
    shared cache may hold a live folder of another machine's process of the same number, which
    writes its lens within seconds)."""
    for work in lenses.glob("*.partial-*"):
        pid = work.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _running(int(pid)):
            continue
        try:
            empty = not any(work.iterdir())
            stale = time.time() - work.stat().st_mtime > ABANDONED_AFTER_S
        except OSError:
            continue
        if empty or stale:
            shutil.rmtree(work, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _adopt_legacy_lens(loaded: LoadedModel, settings: TunedLensSettings, final: Path) -> None:
    """Rename a lens cached under the key an older graftlens gave it (its model fingerprint named
    the model's path) to ``final``, so it is loaded rather than trained again."""
    if (final / MANIFEST).is_file() or not final.parent.is_dir():
        return
    for old_print in legacy_fingerprints(loaded.model):
        old = final.with_name(lens_key(old_print, settings))
        if (old / MANIFEST).is_file():
            try:
                os.replace(old, final)
            except OSError:  # another process renamed it first
                pass
            return


def sample_tokens(
    loaded: LoadedModel, settings: TunedLensSettings, on_token: Callable[[int], None] | None = None
) -> torch.Tensor:
    """``LongTensor[samples, sample_length]``: the model's own text from its start token, seeded
    (``on_token(k)`` after the ``k``-th sampled token of every sequence)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Reporting(StoppingCriteria):  # never stops generation: it only counts its steps
        def __init__(self) -> None:
            self.k = 0

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            self.k += 1
            if on_token is not None:
                on_token(self.k)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    owners = [o for o in (loaded.tokenizer, loaded.model.config) if o is not None]
    starts = [getattr(o, name, None) for o in owners for name in ("bos_token_id", "eos_token_id")]
    start = next((t for t in starts if isinstance(t, int)), 0)
    ids = torch.full((settings.samples, 1), start, dtype=torch.long, device=loaded.device)
    with torch.random.fork_rng(devices=[loaded.device] if loaded.device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        with torch.no_grad():
            out = loaded.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=settings.sample_length - 1,
                min_new_tokens=settings.sample_length - 1,
                pad_token_id=start,
                stopping_criteria=StoppingCriteriaList([Reporting()]),
            )
    return out[:, : settings.sample_length]


def stream_by_depth(loaded: LoadedModel, tokens: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """``float32[n_tokens, n_layers + 1, d_model]``: the stream after ``0 .. n_layers`` layers at
    every token of ``tokens`` but each sequence's first (kept on the CPU)."""
    from graftlens.interventions.hooks import capture
    from graftlens.models.run import run_logits

    n_layers = loaded.adapter.n_layers
    points = ["resid_pre.0", *(f"resid_post.{layer}" for layer in range(n_layers))]
    out = []
    for i in range(0, tokens.shape[0], batch):
        ids = tokens[i : i + batch]
        with capture(loaded, points) as cache:
            run_logits(loaded, ids, torch.ones_like(ids), last_only=True)
        stacked = torch.stack([cache[p][:, 1:] for p in points], 2)  # [b, pos - 1, depth, d_model]
        out.append(stacked.reshape(-1, n_layers + 1, stacked.shape[-1]).float().cpu())
    return torch.cat(out)


def _kl(final_logprobs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``[tokens]``: KL(final || lens) in nats."""
    logprobs = logits.float().log_softmax(-1)
    return (final_logprobs.exp() * (final_logprobs - logprobs)).sum(-1)


def _project(loaded: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    from graftlens.interventions.lens import final_norm

    like = loaded.model.get_output_embeddings().weight
    return loaded.model.get_output_embeddings()(final_norm(loaded)(hidden.to(device=like.device, dtype=like.dtype)))


def held_out_kl(loaded: LoadedModel, lens: TunedLens, streams: torch.Tensor, chunk: int = 64) -> dict[str, list[float]]:
    """Mean KL from the final distribution per depth ``0 .. n_layers - 1``, under the logit lens and ``lens``."""
    n_layers = lens.n_layers
    sums = {"logit": [0.0] * n_layers, "tuned": [0.0] * n_layers}
    with torch.no_grad():
        for i in range(0, streams.shape[0], chunk):
            rows = streams[i : i + chunk]
            final = _project(loaded, rows[:, n_layers]).float().log_softmax(-1)
            for d in range(n_layers):
                sums["logit"][d] += float(_kl(final, _project(loaded, rows[:, d])).sum())
                translated = lens.translate_depth(rows[:, d].to(lens.translators[0].weight.device), d)
                sums["tuned"][d] += float(_kl(final, _project(loaded, translated)).sum())
    return {k: [round(v / streams.shape[0], 6) for v in values] for k, values in sums.items()}


def fit_tuned_lens(
    loaded: LoadedModel, settings: TunedLensSettings, progress: ProgressFn | None = None
) -> tuple[TunedLens, dict]:
    """Train a tuned lens of ``loaded`` (not cached; `tuned_lens` caches). Returns the lens
    and its manifest (settings, held-out KL per depth under both lenses, the last losses)."""
    n_layers, d_model = loaded.adapter.n_layers, loaded.adapter.dims.d_model
    total = settings.sample_length - 1 + settings.steps  # progress: sampled tokens, then KL steps

    def sampled(k: int) -> None:
        if progress is not None:
            progress(k, total, float("nan"))

    tokens = sample_tokens(loaded, settings, sampled)
    held = torch.arange(tokens.shape[0]) % HELD_OUT == HELD_OUT - 1
    train, test = stream_by_depth(loaded, tokens[~held]), stream_by_depth(loaded, tokens[held])
    lens = TunedLens(n_layers, d_model)
    _least_squares_start(lens, train, settings.ridge)
    device = loaded.device
    lens.to(device)
    optimizer = torch.optim.Adam(lens.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    with frozen_parameters(loaded.model):
        for step in range(settings.steps):
            rows = train[torch.randint(0, train.shape[0], (settings.batch_tokens,), generator=generator)].to(device)
            with torch.no_grad():
                final = _project(loaded, rows[:, n_layers]).float().log_softmax(-1)
            translated = torch.stack([lens.translate_depth(rows[:, d], d) for d in range(n_layers)])  # [depth, b, d_model]
            kl = _kl(final.expand(n_layers, *final.shape), _project(loaded, translated))  # [depth, b]
            loss = kl.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(settings.sample_length + step, total, losses[-1])
    lens.cpu().requires_grad_(False)
    scored = test[:: max(1, -(-test.shape[0] // HELD_OUT_TOKENS))]  # [<= HELD_OUT_TOKENS, depth, d_model]
    manifest = {
        "n_layers": n_layers,
        "d_model": d_model,
        "settings": settings.model_dump(),
        "train_tokens": int(train.shape[0]),
        "held_out_tokens": int(scored.shape[0]),
        "held_out_kl": held_out_kl(loaded, lens.to(device), scored),
        "last_losses": [round(x, 6) for x in losses[-10:]],
        "code": LENS_CODE_VERSION,
    }
    return lens.cpu(), manifest


def _least_squares_start(lens: TunedLens, streams: torch.Tensor, ridge: float) -> None:
    """Each ``T_d`` set to the ridge regression of the last layer's stream on the stream after
    ``d`` layers: ``T_d(h) = h + W h + b`` with ``[W | b]`` solving for the residual ``y - h``."""
    target = streams[:, -1].double()  # [n, d_model]
    for d, translator in enumerate(lens.translators):
        x = streams[:, d].double()
        xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)  # [n, d_model + 1]
        gram = xa.T @ xa
        scale = float(gram.diagonal().mean())
        gram += ridge * (scale if math.isfinite(scale) and scale > 0 else 1.0) * torch.eye(gram.shape[0], dtype=gram.dtype)
        theta = torch.linalg.solve(gram, xa.T @ (target - x))  # [d_model + 1, d_model]
        with torch.no_grad():
            translator.weight.copy_(theta[:-1].T.float())
            translator.bias.copy_(theta[-1].float())
