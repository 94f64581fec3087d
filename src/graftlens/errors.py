"""The errors graftlens raises on bad input.

Every error is a :class:`GraftlensError`, so the CLI can print one clear line for any of them
instead of a traceback. Each names the culprit (the spec, the component, the file, ...).
"""

from __future__ import annotations


class GraftlensError(Exception):
    """Base class of every error graftlens raises on purpose."""


class ModelLoadError(GraftlensError):
    """A model spec could not be resolved or loaded; the message names what was tried."""


class UnsupportedArchitectureError(GraftlensError):
    """The model's architecture has no adapter; the message lists the supported ones."""


class UnknownComponentError(GraftlensError):
    """A component name is not in the canonical vocabulary, or the model does not have it."""


class LayerSelectionError(GraftlensError):
    """A layer selection is malformed or out of range for the model."""
