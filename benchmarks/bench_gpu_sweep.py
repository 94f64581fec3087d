"""The Figure-2 sweep of the large recipe on a GPU: seconds, prompts per second, grafted/plain.

The position-grafting-large recipe's test prompts (500 made-up facts) scored under PRE and the six
position sets (every weight grafted at FE, LT, FE+LT, (FE+LT)^C, FE^C, LT^C) as a recipe scores
them (configurations as variants of shared prefixes), on
- ``embedded``: the embedded SmolLM2-135M, a perturbed copy as the donor;
- ``llama-1b``: a random-weight model of Llama-3.2-1B's shape (16 layers, width 2048, 32 heads,
  8 KV heads, MLP 8192, vocabulary 128,256), built from its config (no download), another random
  model of that shape as the donor;
- ``tiny``: a 2-layer model of that kind, to check the script on a CPU.
It also times one full forward of a batch, plain and grafted (FE+LT, every component), in one
interleaved loop. Prints one JSON object.
Usage: python benchmarks/bench_gpu_sweep.py [--device cuda] [--model embedded|llama-1b|tiny] [--dtype bfloat16]
                                            [--batch-size 64] [--max-prompts N] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from bench_graft import interleaved_times
from embedded_pair import embedded_pair

import graftlens
from graftlens.data.dataset import tokenize_test
from graftlens.eval.batching import batches, pad_id_of
from graftlens.eval.scoring import Readout
from graftlens.experiments.prepare import cached_dataset
from graftlens.methods.core.parts import GraftSpec, RunConfig
from graftlens.methods.core.registry import Execution, method_for
from graftlens.models.loading import as_loaded
from graftlens.models.run import run_logits

POSITION_SETS = ["FE", "LT", "FE+LT", "(FE+LT)^C", "FE^C", "LT^C"]
SHAPES = {  # LlamaConfig fields
    "llama-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
}


def models(name: str, device: str, dtype: torch.dtype):
    """(recipient, donor, tokenizer) for ``name``."""
    if name == "embedded":
        embedded, donor = embedded_pair(device, dtype)
        return embedded, donor, embedded.tokenizer
    embedded = graftlens.load_model("smollm2-135m", dtype=dtype, device=device)
    from transformers import LlamaConfig, LlamaForCausalLM

    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**SHAPES[name], torch_dtype=dtype)).to(dtype).eval()
        out.append(as_loaded(model, embedded.tokenizer))
    return out[0], out[1], embedded.tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=["embedded", "llama-1b", "tiny"], default="embedded")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--facts", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    base, donor, tokenizer = models(args.model, args.device, dtype)
    dataset, _ = cached_dataset("fake_actors", args.facts, 0)
    prompts = tokenize_test(dataset.test, tokenizer)[: args.max_prompts]
    work = [b.to(args.device) for b in batches(prompts, args.batch_size, pad_id_of(tokenizer))]

    configs = [RunConfig(name="PRE", panel="positions", model="base")]
    configs += [
        RunConfig(name=p, panel="positions", model="base", grafts=(GraftSpec(donor="ft", components="all", positions=p),))
        for p in POSITION_SETS
    ]
    execution = Execution({"base": base, "ft": donor}, configs=configs, batches=work)
    readouts = [method_for(c.kind).readout(c, execution) for c in configs]
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in work:  # as the runner does: batch by batch, every configuration of a batch in turn
            for readout in readouts:
                Readout.of(readout(batch))
    sync()
    sweep_s = time.perf_counter() - t0

    batch = work[-1]  # the widest batch
    rules = [graftlens.Graft("ft", "all", "all", "FE+LT")]
    runs = {
        "plain": lambda: run_logits(base, batch.input_ids, batch.attention_mask),
        "grafted": lambda: graftlens.grafted_forward(
            base, {"ft": donor}, rules, batch.input_ids, batch.attention_mask, spans=batch.spans
        ),
    }
    times = interleaved_times(runs, args.repeats, sync)
    plain_s, graft_s = statistics.median(times["plain"]), statistics.median(times["grafted"])
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    print(
        json.dumps(
            {
                "benchmark": "figure2_sweep_large",
                "device": f"{args.device} ({device_name}), torch {torch.__version__}",
                "model": args.model,
                "parameters": sum(p.numel() for p in base.model.parameters()),
                "dtype": args.dtype,
                "prompts": len(prompts),
                "configurations": len(configs),
                "batch_size": args.batch_size,
                "sweep_s": round(sweep_s, 3),
                "prompt_configurations_per_s": round(len(prompts) * len(configs) / sweep_s, 1),
                "full_forward_batch": list(batch.input_ids.shape),
                "plain_forward_s": round(plain_s, 5),
                "grafted_forward_s": round(graft_s, 5),
                "grafted_over_plain": round(graft_s / plain_s, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
