"""What a run keeps between configurations, each under a key of its own class.

`Execution.state` (kept for the run) and `Execution.for_batch` (kept for one batch) take only
these keys: a frozen dataclass naming every value the resource depends on, so leaving one out is
a missing field (an error when the key is made), not a value silently reused for another
question; two methods that share a resource name the same class (`DonorActivationsStore` is
CMAP's and circuit CMAP's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ResourceKey:
    """Base of the keys; a subclass's fields are what its resource depends on."""


# ---- kept for the run (`Execution.state`) ---------------------------------------------------


@dataclass(frozen=True)
class SharedPrefixes(ResourceKey):
    """The recipients' shared KV prefixes of weight grafting (`PrefixCaches`)."""


@dataclass(frozen=True)
class DonorActivationsStore(ResourceKey):
    """Donor activations per (donor, batch, point), for CMAP and circuit CMAP alike."""


@dataclass(frozen=True)
class GraftsUnembedding(ResourceKey):
    """Which of the sibling grafting configurations ``family`` graft the unembedding."""

    family: tuple[str, ...]


@dataclass(frozen=True)
class VariantGrafter(ResourceKey):
    """The grafter of one chunk of configurations, each grafting its own variant's rows."""

    configs: tuple[str, ...]


@dataclass(frozen=True)
class HeadMeans(ResourceKey):
    """Every head's mean output over mean-ablation reference prompts."""

    model: str
    boxes: int
    prompts: int
    half: str
    seed: int
    query: str


@dataclass(frozen=True)
class DiscoveredCircuit(ResourceKey):
    """The circuit path patching found in the run's stored results, against ``plain``, for a
    model of ``n_layers`` × ``n_heads`` (its first ``stages`` stages; None: all of them)."""

    plain: str
    sizes: Any  # GroupSizes (frozen, hashable)
    n_layers: int
    n_heads: int
    stages: int | None = None


@dataclass(frozen=True)
class PathPatchingRuns(ResourceKey):
    """Path patching's prepared batches of one model, bounded in bytes."""

    model: str


@dataclass(frozen=True)
class FaithfulnessCircuit(ResourceKey):
    """The circuit a faithfulness-curve configuration keeps."""

    config: str


@dataclass(frozen=True)
class EdgeScoresOf(ResourceKey):
    """EAP scores of a model over the run's prompts (``steps``: EAP-IG steps)."""

    model: str
    steps: int


@dataclass(frozen=True)
class DcmMask(ResourceKey):
    """A DCM mask trained for ``spec`` (a frozen, hashable configuration spec) on ``model``."""

    model: str
    spec: Any


@dataclass(frozen=True)
class SublayerMeans(ResourceKey):
    """A sublayer's mean output over the run's prompts, where a cancellation would touch them."""

    model: str
    sublayer: str
    positions: str


@dataclass(frozen=True)
class TunedLensOf(ResourceKey):
    """A model's tuned lens (cached on disk too)."""

    model: str


# ---- kept for one batch (`Execution.for_batch`) ----------------------------------------------


@dataclass(frozen=True)
class PlainRun(ResourceKey):
    """The batch's plain run of ``model``, kept to be continued (`CachedRun`)."""

    model: str


@dataclass(frozen=True)
class PrefixCuts(ResourceKey):
    """Each sibling grafting configuration's first claimed column on the batch."""

    family: tuple[str, ...]


@dataclass(frozen=True)
class GraftedVariants(ResourceKey):
    """A chunk's last-position logits (and forced targets' log-probabilities), as variants of one pass."""


@dataclass(frozen=True)
class GraftedContinuations(ResourceKey):
    """A chunk's greedy continuations, as variants of one pass."""


@dataclass(frozen=True)
class HeadMappingEvents(ResourceKey):
    """Each layer's attention output at the read position (the extraction events)."""


@dataclass(frozen=True)
class HeadMappingVectors(ResourceKey):
    """Every head's value–output map of the subject, from ``source``."""

    source: str


@dataclass(frozen=True)
class ExtractionOutputs(ResourceKey):
    """An extraction condition's sublayer outputs (one forward per condition)."""


@dataclass(frozen=True)
class EnrichmentReads(ResourceKey):
    """A cancellation's hidden states and logits (one forward per cancellation)."""
