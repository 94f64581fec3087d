"""mkdocs hooks: the reference pages that are generated from the code, so they cannot drift.

A page holds a marker line, and the build replaces it:

- ``<!-- generated: recipe-reference -->``: every recipe field, from the pydantic models of
  :mod:`graftlens.experiments.recipe` and every registered method's sweep;
- ``<!-- generated: cli-reference -->``: every command of the ``graftlens`` typer app, with its
  help text and options.
"""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel

RECIPE_MARKER = "<!-- generated: recipe-reference -->"
CLI_MARKER = "<!-- generated: cli-reference -->"


def _type_name(annotation) -> str:
    """A readable name of a field's type (``list[int]``, ``'a' | 'b'``, ``SweepName``)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default if field.default_factory is None else field.default_factory()
    if isinstance(value, BaseModel):
        return "see below"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())


def model_table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> str:
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        type_name = _type_name(field.annotation)
        rows.append(f"| `{name}` | {type_name} | `{_default(field)}` | {meaning} |")
    return "\n".join(rows)


def recipe_sections() -> list[tuple[str, type[BaseModel]]]:
    """The parts of a recipe, each with the title of its section on the reference page."""
    from graftlens.experiments import recipe as recipe_module
    from graftlens.methods.core.circuits import GroupSizes
    from graftlens.methods.core.parts import GraftSpec
    from graftlens.train.config import FinetuneConfig, LoraSettings

    return [
        ("`data:`", recipe_module.DataSpec),
        ("`data: {entity_tracking: ...}`", recipe_module.EntityTrackingData),
        ("`models: {NAME: ...}`", recipe_module.ModelSpec),
        ("`models: {NAME: {finetune: ...}}`", recipe_module.FinetuneSpec),
        ("`models: {NAME: {finetune: {settings: ...}}}`", FinetuneConfig),
        ("`models: {NAME: {finetune: {settings: {lora: ...}}}}`", LoraSettings),
        ("`eval:`", recipe_module.EvalSpec),
        ("`configs:` (each entry)", recipe_module.ConfigSpec),
        ("`configs: [{grafts: ...}]` (each graft rule)", GraftSpec),
        ("`sizes:` / `path_patching_sizes:` (path-patching stages)", GroupSizes),
    ]


def recipe_reference() -> str:
    from graftlens.experiments import recipe as recipe_module
    from graftlens.methods import sweep_types

    parts = ["## The recipe (top level)", "", _describe(recipe_module.Recipe), "", model_table(recipe_module.Recipe)]
    for title, model in recipe_sections():
        parts += ["", f"## {title}", "", _describe(model), "", model_table(model)]
    parts += [
        "",
        "## `sweeps:` (one entry per kind)",
        "",
        "Each entry of `sweeps:` names its `kind`; the kinds are the registered methods.",
    ]
    for sweep in sweep_types():
        kind = typing.get_args(sweep.model_fields["kind"].annotation)[0]
        parts += ["", f"### `kind: {kind}`", "", _describe(sweep), "", model_table(sweep, skip=("kind",))]
    return "\n".join(parts) + "\n"


def _param_row(param) -> str:
    if param.param_type_name == "argument":
        name = f"`{(param.metavar or param.name).upper()}`"
    else:
        name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    help_text = " ".join((getattr(param, "help", None) or "").split()).replace("|", "\\|")
    default = param.default
    shown = "" if default is None or callable(default) or param.required or default is False else f"`{default}`"
    return f"| {name} | {'required' if param.required else shown} | {help_text} |"


def cli_reference() -> str:
    """Every command of the ``graftlens`` app: its help text and a table of its arguments and options."""
    import typer.main

    from graftlens.cli import app

    root = typer.main.get_command(app)  # typer's own (vendored) click: work by duck typing
    parts: list[str] = []

    def walk(command, path: list[str]) -> None:
        ctx = command.context_class(command, info_name=" ".join(path))
        params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False) and p.name != "help"]
        usage = " ".join(command.collect_usage_pieces(ctx))
        parts.extend(
            [
                f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`",
                "",
                (command.help or "").strip(),
                "",
                f"```text\n{' '.join(path)} {usage}\n```",
                "",
            ]
        )
        if params:
            parts.extend(["| argument or option | default | meaning |", "|---|---|---|"])
            parts.extend(_param_row(p) for p in params)
            parts.append("")
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, name])

    walk(root, ["graftlens"])
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if RECIPE_MARKER in markdown:
        markdown = markdown.replace(RECIPE_MARKER, recipe_reference())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
