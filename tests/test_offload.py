"""Models split by a device map, with layers offloaded to disk (accelerate), graft and patch
exactly as the same model loaded whole."""

from __future__ import annotations

import pytest
import torch

from conftest import save_tiny_model
from graftlens import Graft, grafted_forward, load_model
from graftlens.interventions.patching import activation_patching
from graftlens.models.run import run_logits
from test_graft import batch

RULES = [Graft("ft", "all", "all", "1,-1"), Graft("ft", "mlp", [0, 1], "all")]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def split(request, tmp_path_factory):
    """(the model loaded whole, the same model with every other layer offloaded to disk, donor dir)."""
    family = request.param
    base_dir, donor_dir = tmp_path_factory.mktemp(f"{family}-base"), tmp_path_factory.mktemp(f"{family}-donor")
    save_tiny_model(family, base_dir, seed=0)
    save_tiny_model(family, donor_dir, seed=1)
    whole = load_model(base_dir)
    names = [name for name, _ in whole.model.named_modules()]
    layers = [n for n in names if n.count(".") == 2 and n.rsplit(".", 1)[-1].isdigit()]  # model.layers.i / transformer.h.i
    assert len(layers) == whole.adapter.n_layers, layers
    # Every other layer on disk, everything else on the CPU.
    device_map = {n: ("disk" if i % 2 else "cpu") for i, n in enumerate(layers)}
    for name, module in whole.model.named_children():
        for child, _ in module.named_children():
            full = f"{name}.{child}"
            if not any(layer.startswith(full + ".") for layer in layers):
                device_map[full] = "cpu"
        if not list(module.named_children()):
            device_map[name] = "cpu"
    offloaded = load_model(base_dir, device_map=device_map, offload_folder=tmp_path_factory.mktemp("offload"))
    on_disk = [n for n, p in offloaded.model.named_parameters() if p.device.type == "meta"]
    assert on_disk and all(n.startswith(tuple(layers[1::2])) for n in on_disk)  # really offloaded
    return whole, offloaded, donor_dir


def test_an_offloaded_model_grafts_as_the_whole_one(split) -> None:
    whole, offloaded, donor_dir = split
    ids, mask = batch(3)
    real = mask.bool()
    want = grafted_forward(whole, {"ft": load_model(donor_dir)}, RULES, ids, mask)
    for donor in (load_model(donor_dir), donor_dir):  # a loaded donor, and a lean one read from its files
        got = grafted_forward(offloaded, {"ft": donor}, RULES, ids, mask)
        torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-6)
    plain = run_logits(whole, ids, mask)  # grafting nothing is the model itself
    torch.testing.assert_close(grafted_forward(offloaded, {}, [], ids, mask)[real], plain[real], rtol=0, atol=1e-6)


def test_an_offloaded_model_patches_as_the_whole_one(split) -> None:
    whole, offloaded, _ = split
    clean, _ = batch(5, left_pad=0)
    corrupted = clean.clone()
    corrupted[:, 2] = (corrupted[:, 2] + 7) % 90 + 3
    targets = clean[:, -1]
    for point, by in (("resid_pre", "position"), ("z", "head")):
        want = activation_patching(whole, clean, corrupted, targets, point, by=by)
        got = activation_patching(offloaded, clean, corrupted, targets, point, by=by)
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-6)


def test_a_recipe_with_a_device_map_stores_the_rows_of_the_whole_model(
    tmp_path, text_model_dir, small_facts, graftlens_cache
) -> None:
    """The same sweep, the recipient loaded whole and loaded with every other layer on disk."""
    import textwrap

    from graftlens.experiments import load_recipe, run_recipe
    from graftlens.results import load_run

    data = small_facts.save(tmp_path / "facts")
    whole = load_model(text_model_dir)
    layers = [f"model.layers.{i}" for i in range(whole.adapter.n_layers)]
    split = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
        **{n: ("disk" if i % 2 else "cpu") for i, n in enumerate(layers)},
    }
    rows = {}
    for name, placement in (("whole", ""), ("split", f", device_map: {split}, offload_folder: {tmp_path / 'offload'}")):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(
            textwrap.dedent(
                f"""\
                name: tiny-offload
                data: {{dir: {data}}}
                models:
                  pre: {{spec: {text_model_dir}{placement}}}
                  donor: {{spec: {text_model_dir}}}
                recipient: pre
                eval: {{batch_size: 4, bootstrap: 0}}
                configs: [{{name: PRE, model: pre}}]
                sweeps:
                  - {{kind: components, donor: donor, positions: LT, components: [attn, mlp], layers: [all, half2]}}
                """
            )
        )
        run_recipe(load_recipe(recipe)[0], tmp_path / name, recipe_path=recipe)
        rows[name] = {(r.config, r.example): (r.target_prob, r.target_rank) for r in load_run(tmp_path / name).rows}
    stored = {name: load_run(tmp_path / name).manifest["models"]["pre"] for name in rows}
    assert stored["split"]["device_map"] == split
    assert stored["split"]["fingerprint"] == stored["whole"]["fingerprint"]  # offloaded weights read from disk
    assert rows["split"].keys() == rows["whole"].keys()
    for key, (prob, rank) in rows["whole"].items():
        assert rows["split"][key][1] == rank
        assert abs(rows["split"][key][0] - prob) <= 1e-6
