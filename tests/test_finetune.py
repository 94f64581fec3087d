"""Finetuning: the loss, caching by content hash, resuming, LoRA, manifests and errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from graftlens.models.loading import load_model
from graftlens.train import FinetuneConfig, FinetuneError, finetune
from graftlens.train.loss import causal_lm_loss

FAST = dict(epochs=2, learning_rate=3e-3, batch_size=8, warmup_ratio=0.0)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "gpt_neox", "phi3"])
def test_loss_equals_the_models_own_loss(family):
    from conftest import make_tiny_model

    model = make_tiny_model(family)
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[:, 0] = -100
    ours = causal_lm_loss(model, ids, mask, labels)
    theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_finetune_learns_saves_and_reuses(tmp_path, small_facts, text_model_dir):
    out = tmp_path / "ft"
    config = FinetuneConfig(**FAST)
    result = finetune(text_model_dir, small_facts, config, out_dir=out)
    assert not result.reused and result.path == out
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["content_hash"] == result.manifest["content_hash"]
    assert m["dataset"]["content_hash"] == small_facts.content_hash
    assert m["hyperparameters"]["learning_rate"] == 3e-3 and m["hyperparameters"]["precision"] == "fp32"
    assert m["steps"] == m["total_steps"] == len(m["losses"]) > 0
    assert m["losses"][-1] < m["losses"][0]
    assert set(m["evaluation"]) == {"base", "finetuned"}
    assert "test_qa/forward" in m["evaluation"]["finetuned"]["by_template_direction"]
    assert not (tmp_path / "ft.partial").exists()
    # The checkpoint loads like any model and differs from its base.
    tuned = load_model(out)
    base = load_model(text_model_dir)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.model.parameters(), base.model.parameters()))
    # Asking again returns the same directory without training.
    again = finetune(text_model_dir, small_facts, config, out_dir=out)
    assert again.reused and again.manifest == m
    # Another request refuses to overwrite it.
    with pytest.raises(FinetuneError, match="holds another finetuning run"):
        finetune(text_model_dir, small_facts, FinetuneConfig(**{**FAST, "seed": 1}), out_dir=out)


def test_content_hash_names_the_default_directory(graftlens_cache, small_facts, text_model_dir):
    a = finetune(text_model_dir, small_facts, FinetuneConfig(**{**FAST, "epochs": 1}))
    assert a.path.parent.name == "finetuned" and a.path.name == a.manifest["content_hash"]
    b = finetune(text_model_dir, small_facts, FinetuneConfig(**{**FAST, "epochs": 1}))
    assert b.reused and b.path == a.path
    c = finetune(text_model_dir, small_facts, FinetuneConfig(**{**FAST, "epochs": 1, "learning_rate": 1e-3}))
    assert c.path != a.path


def _stop_at(step: int):
    """A progress callback that stops the run after ``step`` steps (as a kill there would)."""
    from graftlens.train.finetuning import STOP

    return lambda done, total, loss: STOP if done >= step else None


def test_killed_run_resumes_to_the_same_weights(tmp_path, small_facts, text_model_dir):
    config = FinetuneConfig(**{**FAST, "batch_size": 4, "grad_accum": 2})
    whole = finetune(text_model_dir, small_facts, config, out_dir=tmp_path / "whole")
    total = whole.manifest["total_steps"]
    assert total >= 4
    part = finetune(text_model_dir, small_facts, config, out_dir=tmp_path / "cut", progress=_stop_at(3))
    assert part.path.name == "cut.partial" and part.manifest["status"] == "partial" and part.manifest["steps"] == 3
    assert not (tmp_path / "cut").exists()
    steps_seen = []
    resumed = finetune(
        text_model_dir, small_facts, config, out_dir=tmp_path / "cut", progress=lambda s, t, loss: steps_seen.append(s)
    )
    assert steps_seen[0] == 3 and steps_seen[-1] == total  # it went on from step 3, not from 0
    assert resumed.manifest["losses"] == whole.manifest["losses"]
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


class _Planted:
    """A pickle whose loading runs a command: what a planted state file would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_planted_state_file_never_runs(tmp_path, small_facts, text_model_dir):
    import pickle

    config = FinetuneConfig(**{**FAST, "batch_size": 4})
    marker = tmp_path / "ran"
    payload = pickle.dumps({"name": "x", "model": _Planted(marker)})
    # Sanity: the payload does run when unpickled the unsafe way (so the test below can fail).
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    # A state file of the old layout, or of unknown origin, with no JSON: refused unread.
    planted = tmp_path / "a.partial"
    planted.mkdir()
    (planted / "state.pt").write_bytes(payload)
    with pytest.raises(FinetuneError, match="not read"):
        finetune(text_model_dir, small_facts, config, out_dir=tmp_path / "a")
    assert not marker.exists()

    # A real saved state whose tensor file is swapped for the payload: the owner matches, and the
    # tensor file is still read without running anything.
    part = finetune(text_model_dir, small_facts, config, out_dir=tmp_path / "b", progress=_stop_at(1))
    meta = json.loads((part.path / "state.json").read_text())
    assert sorted(p.name for p in part.path.glob("state-*.pt")) == [meta["tensors"]]
    for plant in ("raw pickle", "torch.save archive"):
        if plant == "raw pickle":
            (part.path / meta["tensors"]).write_bytes(payload)
        else:
            torch.save({"model": _Planted(marker)}, part.path / meta["tensors"])
        with pytest.raises(FinetuneError, match="not a graftlens training state"):
            finetune(text_model_dir, small_facts, config, out_dir=tmp_path / "b")
        assert not marker.exists(), plant

    # Another run's state: refused from the JSON alone, before any tensor is read.
    meta["name"] = "someone-else"
    (part.path / "state.json").write_text(json.dumps(meta))
    with pytest.raises(FinetuneError, match="state of another run"):
        finetune(text_model_dir, small_facts, config, out_dir=tmp_path / "b")
    assert not marker.exists()


def test_target_only_loss_and_frozen_embeddings(tmp_path, small_facts, text_model_dir):
    config = FinetuneConfig(**{**FAST, "epochs": 1, "loss_on": "target", "train_embeddings": False, "split": "A"})
    r = finetune(text_model_dir, small_facts, config, out_dir=tmp_path / "t")
    base = load_model(text_model_dir).model
    tuned = load_model(tmp_path / "t").model
    assert torch.equal(base.get_input_embeddings().weight, tuned.get_input_embeddings().weight)
    assert not torch.equal(base.model.layers[0].mlp.up_proj.weight, tuned.model.layers[0].mlp.up_proj.weight)
    assert r.manifest["n_train_texts"] == len(small_facts.train_texts("A"))
    assert {k.split("/")[0] for k in r.manifest["evaluation"]["base"]["by_template_direction"]} == {
        "test_alongside",
        "test_qa",
        "test_title",
    }


def test_lora_checkpoint_is_a_peft_adapter_merged_on_load(tmp_path, small_facts, text_model_dir):
    config = FinetuneConfig(**{**FAST, "epochs": 1, "lora": {"rank": 4}})
    r = finetune(text_model_dir, small_facts, config, out_dir=tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    assert r.manifest["n_trainable_parameters"] < sum(p.numel() for p in load_model(text_model_dir).model.parameters()) / 2
    merged = load_model(tmp_path / "lora")
    assert type(merged.model).__name__ == "LlamaForCausalLM"


def test_bad_requests_are_named(tmp_path, small_facts, text_model_dir):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="learnig_rate"):
        FinetuneConfig(learnig_rate=1e-4)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FinetuneError, match="not a finished graftlens checkpoint"):
        finetune(text_model_dir, small_facts, FinetuneConfig(**FAST), out_dir=tmp_path / "busy")
