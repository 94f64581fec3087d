"""``graftlens finetune`` and ``graftlens eval``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from graftlens.commands.support import console, metrics_table, progress_bar


def _dataset(data: Path | None):
    from graftlens.data.dataset import load_dataset
    from graftlens.data.defaults import demo_dataset

    if data is None:
        return demo_dataset()
    return load_dataset(data), data


def _config(config_file: Path | None, overrides: dict):
    from graftlens.configfiles import read_yaml_mapping, validated
    from graftlens.train import FinetuneConfig

    values: dict = read_yaml_mapping(config_file, "finetuning config") if config_file is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return validated(FinetuneConfig, values, "finetuning", config_file)


def finetune_cmd(
    model: str = typer.Option("smollm2-135m", help="base model spec"),
    data: Path | None = typer.Option(None, help="dataset directory (default: the demo's fact set)"),
    split: str | None = typer.Option(None, help="all, A (task model) or B (relation model)"),
    epochs: int | None = typer.Option(None),
    lr: float | None = typer.Option(None, "--lr", help="peak learning rate"),
    batch_size: int | None = typer.Option(None),
    grad_accum: int | None = typer.Option(None),
    seed: int | None = typer.Option(None),
    lora_rank: int | None = typer.Option(None, help="train LoRA adapters of this rank instead of all weights"),
    config: Path | None = typer.Option(None, help="YAML file of hyperparameters (flags override it)"),
    out: Path | None = typer.Option(None, help="output directory (default: the cache, named by content hash)"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: cuda when available)"),
    checkpoint_every: float = typer.Option(120.0, min=0.0, help="seconds between resumable saves of the training state"),
) -> None:
    """Finetune a model on new facts; the same request reuses its checkpoint, a killed run resumes."""
    from graftlens.train import finetune

    dataset, directory = _dataset(data)
    overrides = {
        "split": split,
        "epochs": epochs,
        "learning_rate": lr,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "seed": seed,
        "lora": {"rank": lora_rank} if lora_rank else None,
    }
    cfg = _config(config, overrides)
    console.print(f"finetuning {escape(model)} on {escape(str(directory))} (split {cfg.split})")
    with progress_bar("finetuning", show_loss=True) as update:
        result = finetune(
            model,
            dataset,
            cfg,
            out_dir=out,
            device=device,
            checkpoint_every_s=checkpoint_every,
            progress=lambda step, total, loss: update(step, total, loss),
        )
    m = result.manifest
    verb = "reused" if result.reused else f"trained in {m['train_seconds']:.0f} s,"
    console.print(f"{verb} checkpoint: [bold]{escape(str(result.path))}[/]")
    ev = m["evaluation"]
    rows = {f"pretrained {k}": v for k, v in ev["base"]["by_direction"].items()}
    rows.update({f"finetuned {k}": v for k, v in ev["finetuned"]["by_direction"].items()})
    console.print(metrics_table("held-out test templates", rows))


def eval_cmd(
    model: str = typer.Argument(..., help="model spec or checkpoint directory"),
    data: Path | None = typer.Option(None, help="dataset directory (default: the demo's fact set)"),
    split: str = typer.Option("all", help="all, A or B"),
    known_facts: bool = typer.Option(False, "--known-facts", help="score the shipped known facts instead"),
    batch_size: int = typer.Option(32),
    device: str | None = typer.Option(None),
) -> None:
    """Next-token target probability, rank and top-k accuracy of a model on a prompt set."""
    from graftlens.data.dataset import tokenize_test
    from graftlens.data.known_facts import load_known_facts, tokenize_known_facts
    from graftlens.data.prompts import check_tokenizer_fits
    from graftlens.eval import evaluate, pad_id_of
    from graftlens.models.loading import load_model
    from graftlens.train.manifest import evaluation_table

    loaded = load_model(model, device=device)
    check_tokenizer_fits(loaded.model, loaded.tokenizer, what=f"model {model!r}")
    if known_facts:
        prompts = tokenize_known_facts(load_known_facts(), loaded.tokenizer)
        for p in prompts:
            p.meta["template"], p.meta["direction"] = p.meta["relation"], "known"
    else:
        dataset, _ = _dataset(data)
        prompts = tokenize_test(dataset.test_examples(split), loaded.tokenizer)
    with progress_bar("evaluating", total=len(prompts)) as update:
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            update(done[0])

        scores = evaluate(loaded.model, prompts, pad_id_of(loaded.tokenizer), batch_size=batch_size, progress=step)
    table = evaluation_table(scores, prompts)
    rows = {"all": table["overall"], **table["by_template_direction"]}
    console.print(metrics_table(f"{model} on {len(prompts)} prompts", rows))
