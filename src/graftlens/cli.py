"""The ``graftlens`` command line: thin over the library, one clear line on bad input."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from graftlens.commands import data as data_commands
from graftlens.commands import experiments as experiment_commands
from graftlens.commands import train as train_commands
from graftlens.commands.support import DEBUG_ENV, INTERRUPTED_EXIT, console, err_console, friendly_errors

# Typer carries its own copy of click; its usage errors are these (typer.BadParameter's bases).
UsageError: type[Exception] = typer.BadParameter.__mro__[1]
NoArgsIsHelp = getattr(sys.modules[UsageError.__module__], "NoArgsIsHelpError", ())

OPTIONAL_VALUES = {"--ray": "local"}  # options whose value may be left out (typer cannot say so), and its stand-in


def with_optional_values(args: list[str]) -> list[str]:
    """``args`` with the stand-in value after an option that names none (``run demo --ray`` is
    ``run demo --ray local``; ``--ray auto`` and ``--ray=HOST:PORT`` are left as they are)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        following = args[i + 1] if i + 1 < len(args) else None
        if arg in OPTIONAL_VALUES and (following is None or following.startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


class _Commands(typer.core.TyperGroup):
    """The command group, reading options whose value may be left out (see ``with_optional_values``),
    and saying a command line it cannot parse (an unknown option, a value of the wrong type) in one
    ``error:`` line, as every other fault, instead of click's usage box."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, with_optional_values(args))
        except UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:  # a subcommand's (or a sub-group's) arguments
            _usage_error(exc)


def _usage_error(exc) -> NoReturn:
    if NoArgsIsHelp and isinstance(exc, NoArgsIsHelp):
        raise exc  # a bare `graftlens` or `graftlens data`: the help it asks for
    where = exc.ctx.command_path if exc.ctx is not None else "graftlens"
    err_console.print(
        f"[bold red]error:[/] {escape(exc.format_message().rstrip('.'))} (see {where} --help)", highlight=False, soft_wrap=True
    )
    raise SystemExit(2)


app = typer.Typer(
    name="graftlens",
    cls=_Commands,
    help="Dynamic weight grafting and activation-level interpretability for finetuned LMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_commands.app, name="data")
app.command("finetune")(friendly_errors(train_commands.finetune_cmd))
app.command("eval")(friendly_errors(train_commands.eval_cmd))
app.command("run")(friendly_errors(experiment_commands.run_cmd))
app.command("verify")(friendly_errors(experiment_commands.verify_cmd))
app.command("report")(friendly_errors(experiment_commands.report_cmd))
app.command("export")(friendly_errors(experiment_commands.export_cmd))
app.command("recipes")(friendly_errors(experiment_commands.recipes_cmd))


@app.command()
@friendly_errors
def info(
    spec: str = typer.Argument(..., help="smollm2-135m, a hub id, a local directory, a .gguf file or a PEFT adapter"),
    dtype: str = typer.Option("float32", help="float32, bfloat16, float16 or auto"),
) -> None:
    """Show a model's architecture, sizes and canonical component map."""
    from graftlens.models import load_model

    t0 = time.perf_counter()
    with console.status(f"loading {spec} ..."):
        loaded = load_model(spec, dtype=dtype)
    seconds = time.perf_counter() - t0
    a = loaded.adapter
    summary = Table(show_header=False, box=None, pad_edge=False)
    for key, value in [
        ("spec", loaded.spec),
        ("location", loaded.location),
        ("architecture", f"{type(loaded.model).__name__} (model_type {a.model_type}, family {a.family.name})"),
        ("parameters", f"{loaded.n_params():,}"),
        ("dtype", str(loaded.dtype).removeprefix("torch.")),
        ("layers", str(a.n_layers)),
        ("heads", str(a.n_heads)),
        ("kv heads", str(a.n_kv_heads)),
        ("d_model / d_head", f"{a.d_model} / {a.d_head}"),
        ("tied embeddings", "yes" if a.tied_embeddings else "no"),
        ("gated mlp", "yes" if a.gated_mlp else "no"),
        ("loaded in", f"{seconds:.1f} s"),
    ]:
        summary.add_row(f"[bold]{key}[/]", escape(value))
    console.print(summary)
    table = Table(title="canonical components", title_justify="left")
    table.add_column("component")
    table.add_column("scope")
    table.add_column("module path(s)")
    for comp, paths in a.component_map().items():
        scope = "model" if comp in a.model_components else "per layer"
        table.add_row(comp, scope, escape("\n".join(paths)))
    console.print(table)
    if a.family.notes:
        console.print(f"[dim]{escape(a.family.notes)}[/]")


@app.command()
@friendly_errors
def demo(
    model: str = typer.Option("smollm2-135m", help="model spec to run the demo on"),
    out: Path = typer.Option(Path("runs/demo"), help="run directory (results, figures, report.html)"),
    restart: bool = typer.Option(False, "--restart", help="discard the results already in the run directory"),
) -> None:
    """Run the main job on the embedded default model: finetune, graft, figures, HTML report."""
    from graftlens.commands.demo import run_demo

    run_demo(model, console=console, out=out, restart=restart)


def _quiet_libraries() -> None:
    """graftlens shows its own progress; silence transformers' per-load bars and notices.

    Through the environment variables transformers reads when it is first imported, so commands
    that never load a model do not import it (half a second). A user's own settings win."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _version(value: bool) -> None:
    if value:
        from graftlens import __version__

        console.print(f"graftlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an unexpected error."),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"
    _quiet_libraries()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # outside any command (while typer parses, say)
        err_console.print("interrupted")
        sys.exit(INTERRUPTED_EXIT)


if __name__ == "__main__":
    main()
