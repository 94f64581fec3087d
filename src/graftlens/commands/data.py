"""``graftlens data ...``: make and inspect datasets."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from graftlens.commands.support import console, friendly_errors

app = typer.Typer(help="Make and inspect datasets (new facts, entity tracking, known facts).", no_args_is_help=True)


@app.command("make")
@friendly_errors
def make(
    out: Path = typer.Argument(..., help="directory to write the dataset into"),
    kind: str = typer.Option("fake_actors", help="fake_actors or real_actors"),
    facts: int = typer.Option(16, "--facts", help="number of movie facts (each gives two directed relations)"),
    seed: int = typer.Option(0, help="random seed; the same seed gives byte-identical files"),
    templates: Path | None = typer.Option(
        None, help="YAML or JSON list of {name, kind, text} templates to use instead of the defaults"
    ),
) -> None:
    """Make a new-fact dataset: facts, training texts and held-out test prompts (split A/B)."""
    from graftlens.data.dataset import build_dataset
    from graftlens.data.templates import DEFAULT_TEMPLATES

    chosen = _read_templates(templates) if templates is not None else DEFAULT_TEMPLATES
    data = build_dataset(kind, facts, seed, chosen)
    data.save(out)
    c = data.meta["counts"]
    console.print(
        f"wrote {escape(str(out))}: {c['facts']} facts, {c['train']} training texts, {c['test']} test prompts "
        f"(content hash {data.content_hash})"
    )
    example = data.test[0]
    console.print(f"example test prompt: {escape(example.prompt)!s} -> {escape(example.target)!s}")


def _read_templates(path: Path):
    from graftlens.configfiles import read_yaml
    from graftlens.data.dataset import DatasetError
    from graftlens.data.templates import templates_from_records

    records = read_yaml(path, "template file")
    if isinstance(records, dict) and "templates" in records:
        records = records["templates"]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DatasetError(f"template file {path} must hold a list of {{name, kind, text}} entries")
    return templates_from_records(records, str(path))


@app.command("entity-tracking")
@friendly_errors
def entity_tracking(
    out: Path = typer.Argument(..., help="JSONL file to write"),
    model: str = typer.Option("smollm2-135m", help="model whose tokenizer decides which objects/labels are single tokens"),
    n: int = typer.Option(100, help="number of prompts"),
    boxes: int = typer.Option(7, help="boxes per prompt"),
    seed: int = typer.Option(0),
) -> None:
    """Make entity-tracking prompts ("The apple is in Box F, ... Box F contains the")."""
    from graftlens.data.entity_tracking import make_entity_tracking
    from graftlens.models.loading import load_model

    tokenizer = load_model(model).tokenizer
    examples = make_entity_tracking(tokenizer, n, boxes, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for e in examples:
            f.write(
                json.dumps(
                    {"id": e.id, "prompt": e.prompt, "target": e.target, "char_spans": e.char_spans, "boxes": e.boxes},
                    sort_keys=True,
                )
                + "\n"
            )
    first = examples[0]
    console.print(f"wrote {len(examples)} prompts to {escape(str(out))}; e.g. {escape(first.prompt)} ->{escape(first.target)}")


@app.command("show")
@friendly_errors
def show(
    directory: Path = typer.Argument(..., help="a dataset directory"),
    n: int = typer.Option(3, help="examples of each kind to print"),
) -> None:
    """Print a dataset's counts and a few training texts and test prompts."""
    from graftlens.data.dataset import load_dataset

    data = load_dataset(directory)
    console.print_json(json.dumps({k: v for k, v in data.meta.items() if k != "templates"}))
    for t in data.train[:n]:
        console.print(f"[bold]train[/] ({t.template}, {t.direction}, split {t.split}): {escape(t.text)}")
    for e in data.test[:n]:
        console.print(f"[bold]test[/] ({e.template}, {e.direction}, split {e.split}): {escape(e.prompt)} ->{escape(e.target)}")
