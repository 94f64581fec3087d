"""Precision: grafting in bfloat16, donors converted to each module's dtype, ``dtype`` in recipes."""

from __future__ import annotations

import textwrap

import pytest
import torch

from conftest import make_text_model, make_tiny_model
from graftlens import Graft, grafted_forward
from graftlens.graft.donors import donor_weights
from graftlens.graft.reference import reference_forward
from test_graft import batch

RULES = [Graft("d", "all", "all", "1,-1"), Graft("d", "mlp", [0, 2], "all")]


def test_bf16_grafting_equals_the_bf16_reference(family: str) -> None:
    base, donor = make_tiny_model(family, 0), make_tiny_model(family, 1)
    ids, mask = batch(3)
    real = mask.bool()
    fp32 = grafted_forward(base, {"d": donor}, RULES, ids, mask)
    base, donor = base.to(torch.bfloat16), donor.to(torch.bfloat16)
    got = grafted_forward(base, {"d": donor}, RULES, ids, mask)
    want = reference_forward(base, {"d": donor}, ids, mask, RULES)
    assert got.dtype == torch.bfloat16
    scale = float(want[real].float().abs().max())
    eps = torch.finfo(torch.bfloat16).eps  # 2^-7: bf16 keeps 8 significant bits
    assert float((got[real].float() - want[real].float()).abs().max()) <= 2 * eps * scale
    assert float((got[real].float() - fp32[real]).abs().max()) > 0  # it really ran in bf16


def test_a_donor_grafts_in_the_dtype_of_each_module() -> None:
    """An fp32 donor grafted into a bf16 base gives what a bf16 copy of the donor gives, bit for
    bit; in a base whose norms stay fp32, the norms' donor tensors stay fp32 too."""
    base, donor = make_tiny_model("llama", 0).to(torch.bfloat16), make_tiny_model("llama", 1)
    ids, mask = batch(4)
    got = grafted_forward(base, {"d": donor}, RULES, ids, mask)
    want = grafted_forward(base, {"d": make_tiny_model("llama", 1).to(torch.bfloat16)}, RULES, ids, mask)
    assert torch.equal(got, want)

    for name, module in base.named_modules():
        if name.endswith("norm"):
            module.float()  # as transformers' keep_in_fp32_modules does
    paths = ["model.layers.0.input_layernorm", "model.layers.0.self_attn.q_proj"]
    weights = donor_weights("d", donor, base, paths)
    assert weights.tensors[paths[0]]["weight"].dtype == torch.float32
    assert weights.tensors[paths[1]]["weight"].dtype == torch.bfloat16


@pytest.fixture(scope="module")
def bf16_dirs(tmp_path_factory, text_tokenizer) -> tuple[str, str]:
    out = []
    for seed in (0, 7):
        path = tmp_path_factory.mktemp(f"llama-{seed}")
        make_text_model("llama", text_tokenizer, seed=seed).save_pretrained(path)
        text_tokenizer.save_pretrained(path)
        out.append(str(path))
    return out[0], out[1]


def test_a_recipe_loads_each_model_in_its_dtype(tmp_path, bf16_dirs, small_facts, graftlens_cache) -> None:
    """``dtype: bfloat16`` on both models: the sweep grafts in bf16, its stored scores are the bf16
    models', and the manifest records the dtype."""
    from graftlens.data.dataset import tokenize_test
    from graftlens.eval import pad_id_of
    from graftlens.eval.batching import collate
    from graftlens.eval.scoring import score_logits
    from graftlens.experiments import load_recipe, run_recipe
    from graftlens.models import load_model
    from graftlens.results import load_run

    pre_dir, ft_dir = bf16_dirs
    data = small_facts.save(tmp_path / "facts")
    recipe = tmp_path / "bf16.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: tiny-bf16
            data: {{dir: {data}}}
            models:
              pre: {{spec: {pre_dir}, dtype: bfloat16}}
              ft: {{spec: {ft_dir}, dtype: bfloat16}}
            recipient: pre
            eval: {{batch_size: 64, bootstrap: 0}}
            configs: [{{name: PRE, model: pre}}]
            sweeps:
              - {{kind: positions, donor: ft, sets: [FE+LT]}}
            """
        )
    )
    run_recipe(load_recipe(recipe)[0], tmp_path / "run", recipe_path=recipe)
    run = load_run(tmp_path / "run")
    assert run.manifest["models"]["pre"]["dtype"] == "bfloat16"
    pre, ft = load_model(pre_dir, dtype="bfloat16"), load_model(ft_dir, dtype="bfloat16")
    prompts = tokenize_test(small_facts.test, pre.tokenizer)
    one = collate(prompts, pad_id_of(pre.tokenizer))
    logits = grafted_forward(pre, {"ft": ft}, [Graft("ft", "all", "all", "FE+LT")], one.input_ids, one.attention_mask, one.spans)
    want = {s.id: s for s in score_logits(logits[:, -1], one.prompts)}
    rows = [r for r in run.rows if r.config == "FE+LT"]
    assert len(rows) == len(prompts)
    for r in rows:
        assert r.target_prob == pytest.approx(want[r.example].target_prob, abs=2e-2)  # bf16: batches of other widths
