"""The errors graftlens raises on bad input.

Every error is a `GraftlensError`, so the CLI can print one clear line for any of them
instead of a traceback, and each message names the culprit (the spec, the component, the file,
the argument). A user catches one of five kinds:

| catch | raised when |
|---|---|
| `ModelLoadError` | a model spec cannot be resolved or loaded, or its architecture has no adapter |
| `RecipeError` | a recipe, a config file or a run option is malformed or does not fit its models |
| `DataError` | a dataset, template, fact file or prompt is malformed (an entity not in its prompt, ...) |
| `InterventionError` | an argument of an intervention is wrong: a component, layer, position, point, donor, circuit |
| `StoreError` | a run directory's results store is missing, damaged, locked or holds another run |

The finer classes (``PositionError``, ``DonorError``, ...) stay importable from the modules that
raise them, each a subclass of one of the five.

Examples:
    >>> import graftlens
    >>> try:
    ...     graftlens.parse_positions("FE+")
    ... except graftlens.InterventionError as exc:
    ...     print(type(exc).__name__)
    PositionError
"""

from __future__ import annotations


class GraftlensError(Exception):
    """Base class of every error graftlens raises on purpose."""


class ModelLoadError(GraftlensError):
    """A model spec could not be resolved or loaded; the message names what was tried."""


class RecipeError(GraftlensError):
    """A recipe, a config file or a run option cannot be read, or does not fit the models it runs on."""


class DataError(GraftlensError):
    """A dataset, template, fact file or prompt is malformed; the message names the file, line or example."""


class InterventionError(GraftlensError):
    """An argument of an intervention is wrong for the model or the inputs; the message names the argument."""


class StoreError(GraftlensError):
    """A run directory's store is missing, damaged, locked, or holds another recipe's results."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model's architecture has no adapter; the message lists the supported ones."""


class UnknownComponentError(InterventionError):
    """A component name is not in the canonical vocabulary, or the model does not have it."""


class LayerSelectionError(InterventionError):
    """A layer selection is malformed or out of range for the model."""


class RenamedRecipeKey(FutureWarning):
    """A recipe used a key graftlens has renamed: it is read with the meaning it had, and the CLI
    prints one line naming the key to write instead."""


class GraftlensNote(UserWarning):
    """Something worth knowing that changes nothing asked for (a cached finetune found under the
    name an older graftlens gave it, a wait for another process finetuning the same model): the
    CLI prints it as one ``note:`` line."""
