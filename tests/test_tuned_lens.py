"""The tuned lens: translators that start as the logit lens, read points at the right depth
(sublayer terms by the linear part), train to a lower held-out KL than the logit lens on every
family, are cached by content, and are what `lens: tuned` reads in recipes."""

from __future__ import annotations

import textwrap

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_model
from graftlens.cli import app
from graftlens.experiments import load_recipe
from graftlens.interventions import point_logits
from graftlens.interventions.hooks import capture
from graftlens.interventions.lens import project
from graftlens.interventions.tuned_lens import TunedLens, TunedLensError
from graftlens.models import as_loaded, load_model
from graftlens.results import load_run
from graftlens.train.tuned_lens import TunedLensSettings, lens_key, tuned_lens

runner = CliRunner()
SMALL = TunedLensSettings(samples=8, sample_length=12, steps=15, batch_tokens=16)


def _randomised(lens: TunedLens, seed: int = 0) -> TunedLens:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in lens.translators:
            t.weight.copy_(0.1 * torch.randn(t.weight.shape, generator=g))
            t.bias.copy_(torch.randn(t.bias.shape, generator=g))
    return lens


def test_an_untrained_lens_is_the_logit_lens_bit_for_bit(family: str) -> None:
    model = as_loaded(make_tiny_model(family, 0))
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    a = model.adapter
    points = [f"{p}.{layer}" for p in ("resid_pre", "resid_post", "attn_out", "mlp_out") for layer in range(a.n_layers)]
    plain = point_logits(model, ids, None, points, "LT")
    lensed = point_logits(model, ids, None, points, "LT", lens=TunedLens(a.n_layers, a.dims.d_model))
    for p in points:
        assert torch.equal(plain[p], lensed[p]), p


def test_points_are_read_at_their_depth_and_sublayer_terms_by_the_linear_part() -> None:
    lens = _randomised(TunedLens(n_layers=4, d_model=8))
    a, b = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.equal(lens.translate(a, "resid_post.3"), a)  # after the last layer: no translator
    assert torch.equal(lens.translate(a, "resid_post.1"), lens.translate(a, "resid_pre.2"))
    assert not torch.allclose(lens.translate(a, "resid_post.1"), a)
    # T(stream + term) = T(stream) + (I + W) term: a term's share has no bias
    whole = lens.translate(a + b, "resid_post.1")
    parts = lens.translate(a, "resid_post.1") + lens.translate(b, "attn_out.1")
    assert torch.allclose(whole, parts, atol=1e-5)
    assert torch.equal(lens.translate(b, "attn_out.1"), lens.translate(b, "mlp_out.1"))
    for bad, message in [("z.1", "not z.1"), ("resid_post.4", "layers 0..3")]:
        with pytest.raises(TunedLensError, match=message):
            lens.translate(a, bad)


def test_point_logits_through_a_lens_are_the_translated_projection() -> None:
    model = as_loaded(make_tiny_model("qwen2", 0))
    a = model.adapter
    lens = _randomised(TunedLens(a.n_layers, a.dims.d_model), 1)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    got = point_logits(model, ids, None, ["resid_post.1", "mlp_out.2"], "LT", lens=lens)
    with capture(model, ["resid_post.1", "mlp_out.2"]) as cache:
        model.model(input_ids=ids)
    for p in ("resid_post.1", "mlp_out.2"):
        assert torch.allclose(got[p], project(model, lens.translate(cache[p][:, -1], p)), atol=1e-5)
    with pytest.raises(TunedLensError, match="the model has 4 of width"):
        point_logits(model, ids, None, ["resid_post.1"], lens=TunedLens(3, a.dims.d_model))
    with pytest.raises(TunedLensError, match="through the final norm"):
        point_logits(model, ids, None, ["resid_post.1"], use_final_norm=False, lens=lens)


def test_a_trained_lens_beats_the_logit_lens_on_held_out_samples(family: str, tmp_path) -> None:
    """Belrose et al.'s objective, KL from the final distribution, on samples the fit never saw:
    lower than the logit lens's at every depth."""
    lens = tuned_lens(make_tiny_model(family, 0), SMALL, directory=tmp_path / "lens")
    kl = lens.manifest["held_out_kl"]
    assert len(kl["tuned"]) == len(kl["logit"]) == lens.n_layers
    for depth, (tuned, logit) in enumerate(zip(kl["tuned"], kl["logit"])):
        assert tuned < logit, (depth, tuned, logit)


def test_lenses_are_cached_by_model_and_settings(graftlens_cache, tmp_path) -> None:
    model = make_tiny_model("llama", 0)
    first = tuned_lens(model, SMALL)
    again = tuned_lens(model, SMALL)
    assert first.manifest["key"] == again.manifest["key"]
    for x, y in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(x, y)
    other = SMALL.model_copy(update={"seed": 1})
    assert lens_key(first.manifest["model"], other) != first.manifest["key"]
    assert first.manifest["settings"] == SMALL.model_dump()
    # the same settings on another machine's run give the same lens: the fit is seeded
    again_fresh = tuned_lens(model, SMALL, directory=tmp_path / "fresh")
    for x, y in zip(first.state_dict().values(), again_fresh.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5)


def test_a_lens_cached_under_an_older_fingerprint_is_loaded_and_dead_work_is_removed(tmp_path, monkeypatch) -> None:
    """A lens an older graftlens cached (its key hashed a fingerprint that named the model's path)
    is renamed to its key and loaded, not trained again; the work folders of killed trainings
    (their process gone) are removed, a live process's kept."""
    import os
    import subprocess
    import sys

    from graftlens.models.fingerprint import legacy_fingerprints
    from graftlens.train import tuned_lens as training

    monkeypatch.setenv("GRAFTLENS_CACHE", str(tmp_path))
    model = make_tiny_model("llama", 0)
    made = tuned_lens(model, SMALL)
    lenses = tmp_path / "lenses"
    (old_print,) = legacy_fingerprints(model)
    old = lenses / lens_key(old_print, SMALL)
    (lenses / made.manifest["key"]).rename(old)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = lenses / f"{made.manifest['key']}.partial-{int(dead.stdout)}"
    live = lenses / f"other.partial-{os.getpid()}"
    abandoned.mkdir()
    live.mkdir()
    monkeypatch.setattr(training, "fit_tuned_lens", lambda *a, **k: pytest.fail("a cached lens was trained again"))
    found = tuned_lens(model, SMALL)
    assert found.manifest["key"] == made.manifest["key"] and not old.exists()
    for x, y in zip(made.state_dict().values(), found.state_dict().values()):
        assert torch.equal(x, y)
    assert not abandoned.exists() and live.exists()


def _lens_recipe(path, model_dir: str, sweeps: str) -> None:
    path.write_text(
        textwrap.dedent(f"""\
        name: tiny-lens
        data: {{known_facts: shipped}}
        models:
          pre: {{spec: {model_dir}}}
        recipient: pre
        eval: {{batch_size: 64, bootstrap: 0, metric: top10}}
        configs:
          - {{name: clean, model: pre}}
        sweeps:
        """)
        + textwrap.indent(textwrap.dedent(sweeps), "  ")
    )


def test_recipes_read_through_the_tuned_lens(tmp_path, text_model_dir, graftlens_cache) -> None:
    """`lens: tuned` on the lens, enrichment and extraction sweeps: trained before scoring (one
    progress bar), its rows are the library's reading through the cached lens, and a recipe that
    says `lens: logit` is the recipe that says nothing (same run id)."""
    sweeps = """\
        - {kind: lens, points: [resid_post], position: subject, panel: logit}
        - {kind: lens, points: [resid_post], position: subject, lens: tuned, panel: tuned}
        - {kind: enrichment, sublayers: [mlp], window: 2, read_layer: 2, lens: tuned, answer: false}
        - {kind: extraction, points: [mlp_out], conditions: [none], lens: tuned}
        """
    _lens_recipe(tmp_path / "r.yaml", text_model_dir, sweeps)
    result = runner.invoke(app, ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    by_config = load_run(tmp_path / "run").by_config
    assert "lens resid_post @ subject @ L1 (tuned lens)" in by_config
    assert any(n.endswith("(tuned lens)") and n.startswith("extraction") for n in by_config)
    model = load_model(text_model_dir)
    lens = tuned_lens(model)  # from the cache the run filled
    from graftlens.data.known_facts import load_known_facts, tokenize_known_facts
    from graftlens.eval import pad_id_of
    from graftlens.eval.batching import collate

    prompts = tokenize_known_facts(load_known_facts(), model.tokenizer)
    batch = collate(prompts, pad_id_of(model.tokenizer))
    logits = point_logits(model, batch.input_ids, batch.attention_mask, ["resid_post.1"], "subject", spans=batch.spans, lens=lens)
    probs = logits["resid_post.1"].float().softmax(-1).gather(1, batch.target_ids[:, None])[:, 0].tolist()
    stored = {r.example: r.target_prob for r in by_config["lens resid_post @ subject @ L1 (tuned lens)"]}
    assert [stored[p.id] for p in prompts] == pytest.approx(probs, rel=1e-4)
    plain = {r.example: r.target_prob for r in by_config["lens resid_post @ subject @ L1"]}
    assert plain != stored
    said_logit = sweeps.replace("panel: logit}", "panel: logit, lens: logit}")
    _lens_recipe(tmp_path / "s.yaml", text_model_dir, said_logit)
    assert load_recipe(tmp_path / "s.yaml")[0].content_hash() == load_recipe(tmp_path / "r.yaml")[0].content_hash()


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("{kind: lens, points: [resid_post], lens: tuned, final_norm: false}", "lens: tuned reads through the final norm"),
        ("{kind: lens, points: [resid_post], lens: fancy}", "lens"),
    ],
)
def test_bad_lens_choices_are_one_error(tmp_path, text_model_dir, sweep, message) -> None:
    _lens_recipe(tmp_path / "bad.yaml", text_model_dir, f"- {sweep}\n")
    result = runner.invoke(app, ["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_training_reports_progress_through_sampling_and_fitting() -> None:
    from graftlens.train.tuned_lens import fit_tuned_lens

    seen: list[tuple[int, int]] = []
    settings = TunedLensSettings(samples=8, sample_length=6, steps=3)
    fit_tuned_lens(as_loaded(make_tiny_model("gpt2", 0)), settings, progress=lambda step, total, loss: seen.append((step, total)))
    assert seen == [(k, 8) for k in range(1, 9)]  # 5 sampled tokens, then 3 steps
