"""``graftlens demo``: the main job on the embedded model, end to end.

1. load the embedded model (converting the GGUF once);
2. make the default new-fact dataset (fake movies, fake actors; cached);
3. finetune the model on it (cached by content hash; a killed run resumes);
4. score pretrained and finetuned on the held-out test templates, both directions;
5. graft the finetuned weights into the pretrained model at a few position sets (FE, LT,
   FE+LT, their complements) and score again.

It grows into the full pipeline (sweeps, figures, HTML report) with the experiments issue.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from graftlens.commands.support import metrics_table, progress_bar
from graftlens.data.dataset import tokenize_test
from graftlens.data.defaults import demo_dataset
from graftlens.eval import evaluate, pad_id_of
from graftlens.eval.scoring import grafted_last_logits
from graftlens.graft import Graft
from graftlens.models import load_model
from graftlens.train import FinetuneConfig, finetune
from graftlens.train.manifest import evaluation_table

POSITION_SETS = ("FE", "LT", "FE+LT", "(FE+LT)^C")


def run_demo(spec: str, console: Console) -> None:
    t0 = time.perf_counter()
    with console.status(f"loading {spec} (the first run converts the embedded GGUF once, ~30 s) ..."):
        base = load_model(spec)
    a = base.adapter
    console.print(
        f"[bold]{escape(spec)}[/]: {type(base.model).__name__}, {base.n_params():,} parameters, "
        f"{a.n_layers} layers, {a.n_heads} heads ({a.n_kv_heads} KV) — loaded in {time.perf_counter() - t0:.1f} s"
    )
    data, directory = demo_dataset()
    c = data.meta["counts"]
    console.print(f"new facts: {c['facts']} made-up movies, {c['train']} training texts, {c['test']} test prompts")
    console.print(f"  dataset: {escape(str(directory))}")
    example = data.test_examples(template="test_qa")[0]
    console.print(f"  e.g. [italic]{escape(example.prompt)}[/] ->[bold]{escape(example.target)}[/]")

    with progress_bar("finetuning", show_loss=True) as update:
        result = finetune(spec, data, FinetuneConfig(), progress=lambda s, t, loss: update(s, t, loss))
    m = result.manifest
    how = "reused from the cache" if result.reused else f"trained in {m['train_seconds']:.0f} s"
    console.print(f"finetuned checkpoint ({how}): [bold]{escape(str(result.path))}[/]")
    tuned = load_model(result.path)

    prompts = tokenize_test(data.test, base.tokenizer)
    pad = pad_id_of(base.tokenizer)
    rows: dict[str, dict] = {}
    configs = [("PRE", base.model), ("SFT", tuned.model)]
    configs += [(pos, grafted_last_logits(base, {"sft": tuned}, [Graft("sft", "all", "all", pos)])) for pos in POSITION_SETS]
    with progress_bar("scoring", total=len(configs) * len(prompts)) as update:
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            update(done)

        for name, fn in configs:
            scores = evaluate(fn, prompts, pad, batch_size=32, progress=step)
            for direction, metrics in evaluation_table(scores, prompts)["by_direction"].items():
                rows[f"{name} ({direction})"] = metrics
    console.print(metrics_table("held-out test templates: pretrained, finetuned, and pretrained with finetuned weights "
                                "grafted at some positions", rows))  # fmt: skip
    _show_example(console, base, tuned, prompts[0])
    console.print(f"[dim]done in {time.perf_counter() - t0:.0f} s[/]")


def _show_example(console: Console, base, tuned, prompt) -> None:
    pad = pad_id_of(base.tokenizer)
    table = Table(title=f"top-5 after {prompt.prompt!r} (target {prompt.target!r})", title_justify="left")
    table.add_column("model")
    table.add_column("top-5 next tokens")
    for name, model in (("pretrained", base.model), ("finetuned", tuned.model)):
        score = evaluate(model, [prompt], pad)[0]
        table.add_row(name, escape("  ".join(repr(base.tokenizer.decode(t)) for t in score.top_token_ids[:5])))
    console.print(table)
