"""A model's fingerprint names its configuration's content and its weights, never where or how it
was loaded; finetunes and runs named by an older graftlens's fingerprints are still found; and
processes asking for one finetune at once share it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from graftlens.models import load_model, model_fingerprint
from graftlens.models.fingerprint import legacy_fingerprints
from graftlens.train import FinetuneConfig, finetune
from graftlens.train.config import content_hash

FAST = dict(epochs=1, learning_rate=3e-3, batch_size=8, warmup_ratio=0.0)


def test_the_fingerprint_names_weights_not_paths(tmp_path, text_model_dir):
    """The same weights through a symlink, a copy and a moved copy, and with runtime flags
    changed, give one fingerprint; another weight or another config value gives another."""
    linked, copied, moved = tmp_path / "linked", tmp_path / "copied", tmp_path / "moved"
    linked.symlink_to(text_model_dir)
    shutil.copytree(text_model_dir, copied)
    shutil.copytree(copied, tmp_path / "first")
    (tmp_path / "first").rename(moved)
    prints = {str(p): model_fingerprint(load_model(p).model) for p in (text_model_dir, linked, copied, moved)}
    assert len(set(prints.values())) == 1, prints

    model = load_model(text_model_dir).model
    same = model_fingerprint(model)
    model.config.use_cache = not model.config.use_cache
    model.config._attn_implementation = "eager"
    model.config.output_attentions = True
    assert model_fingerprint(model) == same
    model.config.rms_norm_eps *= 2
    assert model_fingerprint(model) != same
    model.config.rms_norm_eps /= 2
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert model_fingerprint(model) != same


def _as_an_older_graftlens_named_it(entry, model_dir) -> str:
    """Rename the finished cache entry ``entry`` as graftlens 0.1 named it (its base's fingerprint
    hashed the base's path) and rewrite its manifest so; returns the old name."""
    manifest = json.loads((entry / "manifest.json").read_text())
    (old_print,) = legacy_fingerprints(load_model(model_dir).model)
    config = FinetuneConfig.model_validate(manifest["hyperparameters"])
    old_name = content_hash(old_print, manifest["dataset"]["content_hash"], config)
    manifest.update(content_hash=old_name)
    manifest["base_model"]["fingerprint"] = old_print
    (entry / "manifest.json").write_text(json.dumps(manifest))
    entry.rename(entry.with_name(old_name))
    return old_name


def _must_not_train(step: int, total: int, loss: float) -> None:
    raise AssertionError("a finetune that exists under its older name was trained again")


def test_a_finetune_named_by_an_older_fingerprint_is_found_not_redone(tmp_path, monkeypatch, small_facts, text_model_dir):
    monkeypatch.setenv("GRAFTLENS_CACHE", str(tmp_path / "cache"))
    config = FinetuneConfig(**FAST)
    made = finetune(text_model_dir, small_facts, config)
    weights = (made.path / "model.safetensors").read_bytes()
    old_name = _as_an_older_graftlens_named_it(made.path, text_model_dir)

    # Reached through another path (a symlinked cache and a symlinked base), as the verify was.
    (tmp_path / "cache-link").symlink_to(tmp_path / "cache")
    (tmp_path / "base-link").symlink_to(text_model_dir)
    monkeypatch.setenv("GRAFTLENS_CACHE", str(tmp_path / "cache-link"))
    with pytest.warns(UserWarning, match=f"{old_name} is now named {made.path.name}"):
        found = finetune(str(tmp_path / "base-link"), small_facts, config, progress=_must_not_train)
    assert found.reused and found.path.name == made.path.name
    assert (found.path / "model.safetensors").read_bytes() == weights
    assert found.manifest["content_hash"] == made.path.name and found.manifest["legacy_content_hash"] == old_name
    assert not (tmp_path / "cache" / "finetuned" / old_name).exists()
    again = finetune(text_model_dir, small_facts, config, progress=_must_not_train)
    assert again.reused and again.manifest == found.manifest


def test_an_output_directory_of_an_older_fingerprint_is_recognised(tmp_path, small_facts, text_model_dir):
    out = tmp_path / "ft"
    config = FinetuneConfig(**FAST)
    made = finetune(text_model_dir, small_facts, config, out_dir=out)
    manifest = json.loads((out / "manifest.json").read_text())
    (old_print,) = legacy_fingerprints(load_model(text_model_dir).model)
    trained_with = FinetuneConfig.model_validate(manifest["hyperparameters"])
    manifest.update(content_hash=content_hash(old_print, small_facts.content_hash, trained_with))
    (out / "manifest.json").write_text(json.dumps(manifest))
    found = finetune(text_model_dir, small_facts, config, out_dir=out, progress=_must_not_train)
    assert found.reused and found.manifest["content_hash"] == made.manifest["content_hash"]


WORKER = textwrap.dedent(
    """
    import json, sys
    from graftlens.data.dataset import build_dataset
    from graftlens.train import FinetuneConfig, finetune
    facts = build_dataset("fake_actors", n_facts=4, seed=0)
    result = finetune(sys.argv[1], facts, FinetuneConfig(**json.loads(sys.argv[2])))
    print(json.dumps({"path": str(result.path), "reused": result.reused}))
    """
)


def test_two_processes_needing_one_finetune_both_finish_with_one_entry(tmp_path, text_model_dir):
    """Started together, one trains and the other waits, then both return the same finished
    entry; no work folder is left behind."""
    env = {**os.environ, "GRAFTLENS_CACHE": str(tmp_path / "cache")}
    settings = json.dumps({**FAST, "epochs": 3})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, text_model_dir, settings],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["reused"] for r in results) == [False, True]
    finetuned = tmp_path / "cache" / "finetuned"
    assert sorted(p.name for p in finetuned.iterdir() if not p.name.startswith(".")) == [os.path.basename(results[0]["path"])]
    assert not list(finetuned.glob("*.partial*"))
    assert not [p for p in (finetuned / ".locks").iterdir() if p.suffix == ".json"]  # no holder left


def test_a_run_stored_with_older_fingerprints_resumes_and_verifies(tmp_path, monkeypatch, small_facts, text_model_dir):
    """A run made by an older graftlens (its stored fingerprints hashed the models' paths, its
    finetune named by such a fingerprint) resumes and verifies from a cache reached through
    another path, finetuning nothing."""
    from typer.testing import CliRunner

    from graftlens.cli import app
    from graftlens.results.store import ResultsStore

    runner = CliRunner()
    monkeypatch.setenv("GRAFTLENS_CACHE", str(tmp_path / "cache"))
    data = small_facts.save(tmp_path / "facts")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: legacy\ndata: {{dir: {data}}}\nmodels:\n  pre: {{spec: {text_model_dir}}}\n"
        "  sft: {finetune: {base: pre, settings: {epochs: 1, batch_size: 8}}}\nrecipient: pre\n"
        "eval: {bootstrap: 20}\nconfigs:\n  - {name: PRE, model: pre}\n  - {name: SFT, model: sft}\n"
        "  - name: half\n    grafts: [{donor: sft, components: mlp, layers: half2, positions: LT}]\n"
    )
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(recipe), "--out", str(out)]).exit_code == 0
    # What an older graftlens left: the finetune under its older name, the run's fingerprints hashing paths.
    (entry,) = [p for p in (tmp_path / "cache" / "finetuned").iterdir() if not p.name.startswith(".")]
    old_entry = entry.with_name(_as_an_older_graftlens_named_it(entry, text_model_dir))
    (pre_print,) = legacy_fingerprints(load_model(text_model_dir).model)
    (sft_print,) = legacy_fingerprints(load_model(old_entry).model)
    with ResultsStore.open_existing(out) as store:
        inputs, manifest, rows = store.get_meta("inputs"), store.get_meta("manifest"), store.total()
        store.set_meta("inputs", {**inputs, "models": {"pre": pre_print, "sft": sft_print}})
        manifest["models"]["sft"]["checkpoint"] = str(old_entry)
        store.set_meta("manifest", manifest)

    (tmp_path / "cache-link").symlink_to(tmp_path / "cache")
    monkeypatch.setenv("GRAFTLENS_CACHE", str(tmp_path / "cache-link"))
    verified = runner.invoke(app, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output
    assert f"{old_entry.name} is now named {entry.name}" in verified.output
    resumed = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert "finetuning" not in resumed.output
    with ResultsStore.open_existing(out) as store:
        assert store.total() == rows
