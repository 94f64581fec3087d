"""``finetune``: supervised finetuning of a base model on a new-fact dataset, cached and resumable.

The checkpoint directory is named by a content hash of (base model, dataset, hyperparameters):
asking again for the same thing returns the existing directory. Training writes into a
sibling ``<name>.partial`` directory and saves a resumable state there every
``checkpoint_every_s`` seconds; a killed run started again continues from it and produces
the same weights as an uninterrupted one. The finished directory appears in one rename, so
a half-written checkpoint is never mistaken for a finished one. Processes asking for the same
checkpoint at once take turns (a file lock): the first trains, the others wait and then find it
finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graftlens.cache import cache_dir
from graftlens.data.dataset import FactDataset, load_dataset, tokenize_test
from graftlens.data.prompts import check_tokenizer_fits
from graftlens.errors import GraftlensNote, RecipeError
from graftlens.eval.batching import pad_id_of
from graftlens.eval.scoring import evaluate
from graftlens.fileio import held_lock, write_json_atomic
from graftlens.models.fingerprint import legacy_fingerprints, model_fingerprint
from graftlens.models.loading import LoadedModel, check_device, load_model
from graftlens.provenance import run_versions
from graftlens.train.batches import collate_train, epoch_batches, tokenize_texts
from graftlens.train.config import FinetuneConfig, content_hash
from graftlens.train.manifest import evaluation_table

MANIFEST = "manifest.json"
# A resumable state is two files: STATE (JSON: whose run it is, the step, the losses, and the
# name of its tensor file) and ``state-<step>.pt`` (model, optimizer and scheduler tensors).
# The JSON is read first and its owner checked; the tensor file is then read with torch's
# weights-only unpickler, which builds tensors and plain containers and never runs code.
STATE = "state.json"


class FinetuneError(RecipeError):
    """A finetuning request is inconsistent (empty split, output directory of another run, ...)."""


@dataclass(frozen=True)
class FinetuneResult:
    path: Path
    manifest: dict
    reused: bool  # True when an existing checkpoint was returned without training


ProgressFn = Callable[[int, int, float], object]  # (step, total_steps, loss); may return STOP

STOP = "stop"
"""What a finetuning ``progress`` callback returns to stop after this step, with a resumable
state saved: what a kill at that moment leaves behind (a later call resumes it)."""


def finetune(
    base: str | LoadedModel,
    dataset: str | Path | FactDataset,
    config: FinetuneConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    checkpoint_every_s: float = 120.0,
    progress: ProgressFn | None = None,
) -> FinetuneResult:
    """Finetune ``base`` on ``dataset``'s training texts of ``config.split``.

    ``base`` is a model spec or a `LoadedModel`; a loaded model is trained in place
    (pass a spec to keep a pretrained copy in memory untouched).

    ``progress(step, total_steps, loss)`` is called before the first step and after each one;
    when it returns `STOP` the run saves a resumable state and returns it unfinished (its
    ``.partial`` folder), as a kill at that moment would leave it.
    """
    config = config or FinetuneConfig()
    data = dataset if isinstance(dataset, FactDataset) else load_dataset(dataset)
    texts = [t for t in data.train if config.split == "all" or t.split == config.split]
    if not texts:
        raise FinetuneError(f"dataset {data.content_hash} has no training texts in split {config.split!r}")
    check_device(device)
    device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = config.precision if config.precision != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    config = config.model_copy(update={"precision": precision})

    loaded = base if isinstance(base, LoadedModel) else load_model(base, device=device)
    model, tokenizer = loaded.model, loaded.tokenizer
    check_tokenizer_fits(model, tokenizer, what=f"model {loaded.spec!r}")
    base_print = model_fingerprint(model)
    name = content_hash(base_print, data.content_hash, config)
    final = Path(out_dir) if out_dir is not None else cache_dir() / "finetuned" / name
    with _entry_lock(final):
        existing = _finished_manifest(final)
        if existing is None and out_dir is None:
            existing = _adopt_legacy_entry(model, final, base_print, data.content_hash, config)
        if existing is not None:
            if existing.get("content_hash") != name:
                existing = _recognised_legacy(model, final, existing, base_print, data.content_hash, config)
            return FinetuneResult(final, existing, reused=True)
        if final.exists() and any(final.iterdir()):
            raise FinetuneError(f"{final} exists and is not a finished graftlens checkpoint; choose another output directory")

        # One process at a time trains an entry (the lock): a killed run's work folder is resumed
        # by the next, and a process that waited finds the finished entry above.
        work = final.with_name(final.name + ".partial")
        work.mkdir(parents=True, exist_ok=True)
        run = _Run(loaded, base_print, data, texts, config, name, work, checkpoint_every_s, progress)
        done = run.train()
        if not done:
            return FinetuneResult(work, run.manifest(final_eval=None), reused=False)
        manifest = run.finish()
        model_dir = work / "model"
        if final.exists():
            final.rmdir()  # empty, checked above
        os.replace(model_dir, final)
        shutil.rmtree(work, ignore_errors=True)
        return FinetuneResult(final, manifest, reused=False)


LOCKS = ".locks"  # in the cache's finetuned/ folder: one lock file per checkpoint, held while it is made


@contextmanager
def _entry_lock(final: Path) -> Iterator[None]:
    """Hold the lock of the checkpoint ``final`` for the block. A second process asking for the
    same checkpoint waits (after one note naming the holder) and then finds it finished; the OS
    releases the lock of a process that dies, so a killed run's lock is simply taken over."""
    locks = cache_dir() / "finetuned" / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    # A cache entry's lock is named by the entry; an output directory's by its absolute path.
    in_cache = final.parent.resolve() == (cache_dir() / "finetuned").resolve()
    key = final.name if in_cache else hashlib.sha256(str(final.resolve()).encode()).hexdigest()[:16]

    def wait(holder: str) -> None:
        note = f"waiting for {holder}, which is finetuning the same checkpoint ({final.name})"
        warnings.warn(GraftlensNote(note), stacklevel=5)

    with held_lock(locks / f"{key}.lock", locks / f"{key}.json", wait):
        yield


def _legacy_names(model: torch.nn.Module, locations: Iterable[str], data_hash: str, config: FinetuneConfig) -> list[str]:
    """The names an older graftlens gave this finetune (its base fingerprint named the base's path)."""
    return sorted({content_hash(p, data_hash, config) for p in legacy_fingerprints(model, locations)})


def _adopt_legacy_entry(
    model: torch.nn.Module, final: Path, base_print: str, data_hash: str, config: FinetuneConfig
) -> dict | None:
    """A finished cache entry of this finetune under the name an older graftlens gave it, renamed to
    ``final`` (its manifest updated first, so a kill in between leaves an entry found the next
    time); ``None`` when there is none. The base paths that entries recorded are tried as the
    paths the older fingerprints named."""
    entries = [m for m in final.parent.glob(f"*/{MANIFEST}") if m.parent.name != final.name]
    manifests = {m.parent: _finished_manifest(m.parent) for m in entries}
    locations = {str(m["base_model"].get("source")) for m in manifests.values() if m and isinstance(m.get("base_model"), dict)}
    for old_name in _legacy_names(model, locations, data_hash, config):
        old = final.parent / old_name
        manifest = manifests.get(old)
        if manifest is None or manifest.get("content_hash") not in (old_name, final.name):
            continue
        manifest.update(content_hash=final.name, legacy_content_hash=old_name)
        manifest["base_model"]["fingerprint"] = base_print
        write_json_atomic(old / MANIFEST, manifest)
        os.replace(old, final)
        warnings.warn(GraftlensNote(f"finetuned checkpoint {old_name} is now named {final.name} (same weights)"), stacklevel=3)
        return manifest
    return None


def _recognised_legacy(
    model: torch.nn.Module, final: Path, existing: dict, base_print: str, data_hash: str, config: FinetuneConfig
) -> dict:
    """``existing`` (the finished manifest in ``final``, of another content hash) when an older
    graftlens gave this same finetune that hash; its manifest then takes the current one.
    Otherwise ``final`` holds another run: an error."""
    source = existing.get("base_model", {}).get("source") if isinstance(existing.get("base_model"), dict) else None
    legacy = _legacy_names(model, [str(source)] if source else [], data_hash, config)
    name = content_hash(base_print, data_hash, config)
    if existing.get("content_hash") not in legacy:
        raise FinetuneError(
            f"{final} holds another finetuning run (content hash {existing.get('content_hash')}, this request {name}); "
            "choose another output directory"
        )
    existing.update(content_hash=name, legacy_content_hash=existing.get("content_hash"))
    existing["base_model"]["fingerprint"] = base_print
    write_json_atomic(final / MANIFEST, existing)
    return existing


def _finished_manifest(path: Path) -> dict | None:
    m = path / MANIFEST
    if not m.is_file():
        return None
    try:
        manifest = json.loads(m.read_text())
    except json.JSONDecodeError:
        return None
    return manifest if manifest.get("status") == "complete" else None


class _Run:
    """The state of one training run: model, optimizer, schedule, losses; saved and restored."""

    def __init__(
        self,
        loaded: LoadedModel,
        base_print: str,
        data: FactDataset,
        texts: list,
        config: FinetuneConfig,
        name: str,
        work: Path,
        checkpoint_every_s: float,
        progress: ProgressFn | None,
    ) -> None:
        self.loaded, self.data, self.config, self.name, self.work = loaded, data, config, name, work
        self.base_print = base_print
        self.checkpoint_every_s, self.progress = checkpoint_every_s, progress
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        spans = None
        if config.loss_on == "target":
            facts = {f.id: f for f in data.facts}
            spans = []
            for t in texts:
                target = facts[t.fact_id].slot_values(t.direction)["second_actor"]
                start = t.text.rindex(target)
                spans.append((start, start + len(target)))
        self.items = tokenize_texts(self.tokenizer, [t.text for t in texts], spans)
        self.pad_id = pad_id_of(self.tokenizer)
        per_step = config.batch_size * config.grad_accum
        self.steps_per_epoch = math.ceil(len(self.items) / per_step)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.step = 0
        self.losses: list[float] = []
        self.seconds = 0.0
        self.base_eval: dict | None = None

        torch.manual_seed(config.seed)
        self.test_prompts = tokenize_test(data.test_examples(config.split), self.tokenizer)
        self.model = self._prepare_model()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
        # Imported here: `transformers.get_scheduler` pulls in the trainer and peft (seconds), which
        # every command that merely reads a recipe would otherwise pay for.
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            config.schedule if config.schedule != "constant" else "constant_with_warmup",
            self.optimizer,
            num_warmup_steps=int(config.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self._restore()

    def _prepare_model(self) -> torch.nn.Module:
        model = self.loaded.model
        if self.base_eval is None and not (self.work / STATE).is_file():
            self.base_eval = self._evaluate(model)
        if self.config.lora is not None:
            from peft import LoraConfig, get_peft_model

            adapter = self.loaded.adapter
            targets = sorted({s.path.rsplit(".", 1)[-1] for c in self.config.lora.components for s in adapter.sites(c, 0)})
            lora = LoraConfig(
                r=self.config.lora.rank,
                lora_alpha=self.config.lora.alpha,
                lora_dropout=self.config.lora.dropout,
                target_modules=targets,
            )
            model = get_peft_model(model, lora)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
            if not self.config.train_embeddings:
                model.get_input_embeddings().weight.requires_grad_(False)
                model.get_output_embeddings().weight.requires_grad_(False)
        return model

    def _evaluate(self, model: torch.nn.Module) -> dict:
        model.eval()
        scores = evaluate(model, self.test_prompts, self.pad_id, batch_size=32)
        return evaluation_table(scores, self.test_prompts)

    # -- resumable state -------------------------------------------------------------------
    def _tensor_state(self) -> dict[str, Any]:
        trainable_names = {k for k, p in self.model.named_parameters() if p.requires_grad}
        trainable = {k: v for k, v in self.model.state_dict().items() if k in trainable_names}
        return {"model": trainable, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def _save_state(self) -> None:
        """Write the tensors under a new name, then point the JSON at them, then drop older tensors.

        A kill at any moment leaves a JSON that names a complete tensor file."""
        tensors = f"state-{self.step:08d}.pt"
        tmp = self.work / (tensors + ".tmp")
        torch.save(self._tensor_state(), tmp)
        os.replace(tmp, self.work / tensors)
        meta = {
            "name": self.name,
            "step": self.step,
            "losses": self.losses,
            "seconds": self.seconds,
            "base_eval": self.base_eval,
            "tensors": tensors,
        }
        write_json_atomic(self.work / STATE, meta)
        for old in self.work.glob("state-*.pt*"):
            if old.name != tensors:
                old.unlink(missing_ok=True)

    def _restore(self) -> None:
        path = self.work / STATE
        if not path.is_file():
            if any(self.work.glob("state*.pt")):
                raise FinetuneError(
                    f"{self.work} holds a training state without {STATE} (of an older graftlens or of unknown origin); "
                    "it is not read: remove the directory to start over"
                )
            return
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FinetuneError(f"{path} is damaged ({e}); remove {self.work} to start over") from None
        if not isinstance(meta, dict) or meta.get("name") != self.name:
            owner = meta.get("name") if isinstance(meta, dict) else None
            raise FinetuneError(f"{self.work} holds the state of another run ({owner}); remove it or choose another output")
        tensors = self.work / str(meta.get("tensors", ""))
        if tensors.parent != self.work or not tensors.is_file():
            raise FinetuneError(f"{path} names a tensor file that is not in {self.work}; remove the directory to start over")
        try:
            state = torch.load(tensors, map_location=self.device, weights_only=True)
        except Exception as e:  # the weights-only unpickler refuses anything but tensors and plain data
            raise FinetuneError(
                f"{tensors} is not a graftlens training state ({type(e).__name__}); it was not run. "
                f"Remove {self.work} to start over"
            ) from None
        missing = self.model.load_state_dict(state["model"], strict=False)
        if missing.unexpected_keys:
            raise FinetuneError(f"saved state in {self.work} does not fit the model: {missing.unexpected_keys[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.losses, self.seconds = meta["step"], meta["losses"], meta["seconds"]
        self.base_eval = meta["base_eval"]

    # -- training ----------------------------------------------------------------------------
    def train(self) -> bool:
        """Train until done (True) or until the progress callback says `STOP` (False, state saved)."""
        from graftlens.train.loss import causal_lm_loss

        cfg = self.config
        self.model.train()
        lengths = [len(it.input_ids) for it in self.items]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        last_save = time.monotonic()
        if self.progress:
            self.progress(self.step, self.total_steps, self.losses[-1] if self.losses else float("nan"))
        micro_epoch, micro = -1, []
        while self.step < self.total_steps:
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            if epoch != micro_epoch:  # the epoch's batch order, drawn once per epoch
                micro_epoch, micro = epoch, epoch_batches(len(self.items), lengths, cfg.batch_size, cfg.seed, epoch)
            group = micro[in_epoch * cfg.grad_accum : (in_epoch + 1) * cfg.grad_accum]
            t0 = time.perf_counter()
            n_tokens = sum(sum(self.items[i].loss_mask) for b in group for i in b)
            step_loss = 0.0
            for batch in group:
                ids, attn, labels = collate_train([self.items[i] for i in batch], self.pad_id)
                ids, attn, labels = ids.to(self.device), attn.to(self.device), labels.to(self.device)
                with autocast:
                    loss = causal_lm_loss(self.model, ids, attn, labels)
                weight = int((labels[:, 1:] != -100).sum()) / n_tokens  # token-weighted mean over the step
                (loss * weight).backward()
                step_loss += float(loss.detach()) * weight
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.losses.append(round(step_loss, 6))
            self.seconds += time.perf_counter() - t0
            stop = self.progress(self.step, self.total_steps, step_loss) if self.progress else None
            if stop == STOP and self.step < self.total_steps:
                self._save_state()
                return False
            if time.monotonic() - last_save > self.checkpoint_every_s and self.step < self.total_steps:
                self._save_state()
                last_save = time.monotonic()
        return True

    def manifest(self, final_eval: dict | None) -> dict:
        cfg = self.config
        return {
            "status": "complete" if final_eval is not None else "partial",
            "content_hash": self.name,
            "base_model": {"spec": self.loaded.spec, "source": self.loaded.location, "fingerprint": self.base_print},
            "dataset": {
                "content_hash": self.data.content_hash,
                **{k: self.data.meta[k] for k in ("kind", "n_facts", "n_train", "seed") if k in self.data.meta},
            },
            "split": cfg.split,
            "hyperparameters": cfg.hyperparameters(),
            "n_train_texts": len(self.items),
            "n_trainable_parameters": self.n_trainable,
            "steps": self.step,
            "total_steps": self.total_steps,
            "losses": self.losses,
            "train_seconds": round(self.seconds, 2),
            "evaluation": {"base": self.base_eval, "finetuned": final_eval},
            "versions": run_versions(),
            "device": str(self.device),
        }

    def finish(self) -> dict:
        """Evaluate, then save the model (LoRA: the peft adapter, merged on load), tokenizer and manifest."""
        self.model.eval()
        final_eval = self._evaluate(self.model)
        out = self.work / "model"
        if out.exists():
            shutil.rmtree(out)
        if self.config.lora is not None:
            self.model.peft_config["default"].base_model_name_or_path = self.loaded.spec
            self.model.save_pretrained(out)
        else:
            self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        manifest = self.manifest(final_eval)
        write_json_atomic(out / MANIFEST, manifest)
        return manifest
