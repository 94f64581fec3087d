"""Donor weights: the parameters a graft plan needs from each donor, and nothing more.

A donor given as a loaded model lends references to its own parameters (no copy). A donor
given as a checkpoint directory is read lazily from its safetensors files: only the tensors of
the modules the plan grafts are loaded, never a second full model.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from graftlens.errors import InterventionError
from graftlens.models.loading import LoadedModel

DonorLike = LoadedModel | nn.Module | str | Path
"""What names a donor: a loaded model, an HF module, or a checkpoint directory (read lazily)."""


class DonorError(InterventionError):
    """A donor is missing, of another architecture, or has tensors of other shapes."""


def module_params(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters by name: ``named_parameters(recurse=False)`` without its
    generic walk, which costs more than the rest of setting up a graft once per module."""
    return {name: p for name, p in module._parameters.items() if p is not None}


def _tied_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Parameter name → every name of the same tensor (tied weights have several)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {name: names for names in by_id.values() for name in names}


class DonorWeights:
    """The donor tensors of some modules, keyed by module path then parameter name."""

    def __init__(self, name: str, source: str, tensors: dict[str, dict[str, torch.Tensor]], owned: bool):
        self.name = name
        self.source = source
        self.tensors = tensors
        self.owned = owned  # True when read from disk for this plan (counts as extra memory)

    @property
    def bytes_held(self) -> int:
        """Bytes of donor tensors this object holds beyond an already-loaded model (0 when borrowed)."""
        if not self.owned:
            return 0
        seen: set[int] = set()
        total = 0
        for params in self.tensors.values():
            for t in params.values():
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
        return total

    def params_for(self, path: str) -> dict[str, torch.Tensor]:
        return self.tensors[path]


class DonorSource(ABC):
    """A kind of donor: hands over its tensors of some of the recipient's modules, checked
    against the recipient's shapes and placed where each module computes.

    The kinds: `ModelDonor` (a loaded model lends its own parameters),
    `CheckpointDonor` (a ``save_pretrained`` directory read lazily), and the spliced donor
    of head grafts (`SplicedDonor`)."""

    @abstractmethod
    def weights(self, name: str, recipient: nn.Module, paths: list[str]) -> DonorWeights:
        """The donor tensors of the modules at ``paths`` of ``recipient``; ``name`` names the
        donor in errors."""


class ModelDonor(DonorSource):
    """A donor model in memory: its parameters are lent by reference (no copy)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def weights(self, name: str, recipient: nn.Module, paths: list[str]) -> DonorWeights:
        donor, recipient_type = self.model, recipient.config.model_type
        donor_type = getattr(getattr(donor, "config", None), "model_type", None)
        if donor_type != recipient_type:
            raise DonorError(f"donor {name!r} is a {donor_type} model, the recipient is {recipient_type}")
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        donor_modules = dict(donor.named_modules())
        for path in paths:
            if path not in donor_modules:
                raise DonorError(f"donor {name!r} has no module {path!r}")
            tensors[path] = {k: v.detach() for k, v in module_params(donor_modules[path]).items()}
        return _placed(DonorWeights(name, type(donor).__name__, tensors, owned=False), recipient, paths)


class CheckpointDonor(DonorSource):
    """A donor checkpoint directory: only the tensors of the grafted modules are read."""

    def __init__(self, directory: Path):
        self.directory = directory

    def weights(self, name: str, recipient: nn.Module, paths: list[str]) -> DonorWeights:
        return _placed(_lazy_from_checkpoint(name, self.directory, recipient, paths), recipient, paths)


def as_donor_source(donor: DonorSource | LoadedModel | nn.Module | str | Path) -> DonorSource:
    """The `DonorSource` of a donor as the public functions accept it."""
    if isinstance(donor, DonorSource):
        return donor
    if isinstance(donor, LoadedModel):
        return ModelDonor(donor.model)
    if isinstance(donor, nn.Module):
        return ModelDonor(donor)
    if isinstance(donor, (str, Path)):
        return CheckpointDonor(Path(donor))
    raise DonorError(f"a donor is a loaded model, an nn.Module or a checkpoint directory, not {type(donor).__name__}")


def donor_weights(
    name: str,
    donor: DonorSource | LoadedModel | nn.Module | str | Path,
    recipient: nn.Module,
    module_paths: Iterable[str],
) -> DonorWeights:
    """Collect and check the donor's parameters for ``module_paths`` of ``recipient``."""
    return as_donor_source(donor).weights(name, recipient, sorted(set(module_paths)))


def _placed(weights: DonorWeights, recipient: nn.Module, paths: list[str]) -> DonorWeights:
    """``weights`` checked against the recipient's shapes, each module's tensors moved where that
    module computes, in its dtype: a recipient split over devices (a device map) keeps every
    module's donor weights beside its own."""
    recipient_modules = dict(recipient.named_modules())
    _check_shapes(weights, recipient_modules, paths)
    for path, params in weights.tensors.items():
        like = next(iter(module_params(recipient_modules[path]).values()))
        device, dtype = _execution_device(recipient_modules[path], like.device), like.dtype
        for key, t in params.items():
            if t.device != device or t.dtype != dtype:
                params[key] = t.to(device=device, dtype=dtype)  # a converted copy: now held here
                weights.owned = True
    return weights


def _execution_device(module: nn.Module, device: torch.device) -> torch.device:
    """Where ``module`` computes: accelerate's hook names it for an offloaded module (whose own
    parameters wait on the meta device), else its parameters' device."""
    hook = getattr(module, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if device.type == "meta" and execution is not None:
        return torch.device(execution) if not isinstance(execution, torch.device) else execution
    return device


def _check_shapes(weights: DonorWeights, recipient_modules: dict[str, nn.Module], paths: list[str]) -> None:
    for path in paths:
        base_params = module_params(recipient_modules[path])
        donor_params = weights.tensors[path]
        for pname, bp in base_params.items():
            dp = donor_params.get(pname)
            if dp is None:
                raise DonorError(f"donor {weights.name!r} lacks tensor {path}.{pname}")
            if dp.shape != bp.shape:
                raise DonorError(
                    f"donor {weights.name!r}: tensor {path}.{pname} has shape {list(dp.shape)}, "
                    f"the recipient has {list(bp.shape)}"
                )


def _lazy_from_checkpoint(name: str, directory: Path, recipient: nn.Module, paths: list[str]) -> DonorWeights:
    from safetensors import safe_open

    if not (directory / "config.json").is_file():
        raise DonorError(f"donor {name!r}: {directory} is not a save_pretrained directory (no config.json)")
    config = json.loads((directory / "config.json").read_text())
    recipient_type = recipient.config.model_type
    if config.get("model_type") != recipient_type:
        raise DonorError(f"donor {name!r} ({directory}) is a {config.get('model_type')} model, the recipient is {recipient_type}")
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise DonorError(f"donor {name!r}: no .safetensors files in {directory}")
    key_to_file: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                key_to_file[key] = f
    aliases = _tied_aliases(recipient)
    wanted: dict[str, tuple[str, str]] = {}  # checkpoint key -> (module path, param name)
    for path in paths:
        for pname in module_params(recipient.get_submodule(path)):
            full = f"{path}.{pname}"
            # A tied tensor is stored once, under any of its names.
            key = next((k for k in [full, *aliases.get(full, [])] if k in key_to_file), None)
            if key is None:
                raise DonorError(f"donor {name!r} ({directory}) has no tensor {full}")
            wanted[f"{path}\0{pname}"] = (key, full)
    tensors: dict[str, dict[str, torch.Tensor]] = {p: {} for p in paths}
    by_file: dict[Path, list[str]] = {}
    for slot, (key, _) in wanted.items():
        by_file.setdefault(key_to_file[key], []).append(slot)
    for f, slots in by_file.items():
        with safe_open(str(f), framework="pt") as handle:
            for slot in slots:
                path, pname = slot.split("\0")
                tensors[path][pname] = handle.get_tensor(wanted[slot][0])
    return DonorWeights(name, str(directory), tensors, owned=True)
