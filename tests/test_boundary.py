"""The library's boundary: a wrong argument to a public entry point is one graftlens error naming
the argument, raised before any forward, never a RuntimeError from deep inside torch.

One table of wrong calls covers every public entry point of ``graftlens`` that takes a model,
token ids, a mask, targets or hidden states; the rest (loading, recipes, runs, positions) raise
their own kinds, listed at the end."""

from __future__ import annotations

import pytest
import torch

import graftlens
from graftlens import GraftlensError, InterventionError, PathInputs
from graftlens.models import tiny_model

MODEL = tiny_model("llama")  # 4 layers, 4 heads, width 32, vocabulary 96
IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
MASK = torch.ones_like(IDS)
TARGETS = torch.tensor([3, 4])
CIRCUIT = graftlens.Circuit({"movers": graftlens.HeadGroup(((1, 1),), "LT")})


def _enter(context_manager) -> None:
    with context_manager:
        pass


WRONG_CALLS = [
    # (public name, the call, what the error must say)
    (
        "activation_patching",
        lambda: graftlens.activation_patching(MODEL, IDS, IDS.flip(0), torch.arange(5)),
        "target_ids has 5 entries for a batch of 2 prompts",
    ),
    (
        "activation_patching",
        lambda: graftlens.activation_patching(MODEL, IDS.float(), IDS, TARGETS),
        "clean_ids must hold integer token ids, not torch.float32",
    ),
    (
        "activation_patching",
        lambda: graftlens.activation_patching(MODEL, IDS, IDS, TARGETS, attention_mask=MASK[:, :3]),
        "attention_mask [2, 3] must have the shape of clean_ids [2, 4]",
    ),
    (
        "attribution_patching",
        lambda: graftlens.attribution_patching(MODEL, IDS[0], IDS[0], TARGETS),
        "clean_ids must be [batch, pos], got shape [4]",
    ),
    (
        "attribution_patching",
        lambda: graftlens.attribution_patching(MODEL, IDS, IDS + 100, TARGETS),
        "corrupted_ids holds token id 112, outside the model's vocabulary (0..95)",
    ),
    (
        "attribution_patching",
        lambda: graftlens.attribution_patching(MODEL, IDS, IDS, TARGETS.float()),
        "target_ids must hold integer token ids",
    ),
    ("run_logits", lambda: graftlens.run_logits(MODEL, IDS + 1000), "input_ids holds token id 1012"),
    ("run_logits", lambda: graftlens.run_logits("smollm2-135m", IDS), "model must be a LoadedModel"),
    ("run_logits", lambda: graftlens.run_logits(MODEL, IDS, MASK * 2), "attention_mask must hold only 0 (padding) and 1"),
    (
        "run_logits",
        lambda: graftlens.run_logits(MODEL, IDS.to("meta")),
        "input_ids is on meta, the model takes its inputs on cpu",
    ),
    ("run_logits", lambda: graftlens.run_logits(MODEL, [[5, 6]]), "input_ids must be a tensor of token ids"),
    (
        "patched_logits",
        lambda: graftlens.patched_logits(MODEL, IDS, MASK, [], spans=[{}]),
        "spans has 1 entries for a batch of 2",
    ),
    (
        "run_with_cache",
        lambda: graftlens.run_with_cache(MODEL, torch.empty(0, 3, dtype=torch.long), None, ["resid_pre.0"]),
        "input_ids is empty",
    ),
    (
        "cross_model_patched_logits",
        lambda: graftlens.cross_model_patched_logits(MODEL, {}, IDS.float(), None, {}),
        "input_ids must hold integer token ids",
    ),
    (
        "cross_model_patched_logits",
        lambda: graftlens.cross_model_patched_logits(None, {}, IDS, None, {}),
        "recipient must be a LoadedModel",
    ),
    (
        "cmap_sweep",
        lambda: graftlens.cmap_sweep(MODEL, MODEL, {}, IDS[None]),
        "input_ids must be [batch, pos], got shape [1, 2, 4]",
    ),
    ("graft_sweep", lambda: graftlens.graft_sweep(MODEL, {}, {}, IDS, MASK[:1]), "attention_mask [1, 4] must have the shape"),
    ("grafted_forward", lambda: graftlens.grafted_forward(MODEL, {}, [], IDS.bool()), "input_ids must hold integer token ids"),
    ("grafted_generate", lambda: graftlens.grafted_generate(MODEL, {}, [], IDS, MASK, [{}], 1), "spans has 1 entries"),
    ("grafting", lambda: _enter(graftlens.grafting([MODEL], {}, [])), "recipient must be a LoadedModel"),
    (
        "head_mapping_vectors",
        lambda: graftlens.head_mapping_vectors(MODEL, IDS - 10, None, [0], "LT"),
        "input_ids holds token id -5",
    ),
    (
        "knockout_sweep",
        lambda: graftlens.knockout_sweep(MODEL, IDS, MASK.float() / 2, [[0]], "LT"),
        "attention_mask must hold only 0",
    ),
    ("attention_knockout", lambda: _enter(graftlens.attention_knockout("model", [0])), "model must be a LoadedModel"),
    ("mean_ablated_logits", lambda: graftlens.mean_ablated_logits(MODEL, IDS, MASK.T, CIRCUIT, {}), "attention_mask [4, 2]"),
    ("head_means", lambda: graftlens.head_means(3, []), "model must be a LoadedModel"),
    (
        "point_logits",
        lambda: graftlens.point_logits(MODEL, IDS, MASK, ["resid_post.0"], spans=[{}, {}, {}]),
        "spans has 3 entries",
    ),
    ("project", lambda: graftlens.project(MODEL, torch.zeros(2, 5)), "hidden has width 5, the model's residual stream 32"),
    ("project", lambda: graftlens.project(MODEL, torch.zeros(2, 32, dtype=torch.long)), "hidden must be a float tensor"),
    (
        "path_patching",
        lambda: graftlens.path_patching(MODEL, PathInputs(IDS, IDS), torch.arange(5)),
        "target_ids has 5 entries for a batch of 2",
    ),
    (
        "path_patched_logits",
        lambda: graftlens.path_patched_logits(MODEL, PathInputs(IDS + 500, IDS), None),
        "inputs.clean_ids holds token id 512",
    ),
    (
        "path_patched_logits",
        lambda: graftlens.path_patched_logits(MODEL, PathInputs(IDS, IDS, corrupted_mask=MASK * 3), None),
        "inputs.corrupted_mask must hold only 0",
    ),
    ("cancel_sublayers", lambda: _enter(graftlens.cancel_sublayers(object(), "mlp", [0])), "model must be a LoadedModel"),
    ("sublayer_means", lambda: graftlens.sublayer_means(None, [], "mlp", [0]), "model must be a LoadedModel"),
    ("capture", lambda: _enter(graftlens.capture("x", ["resid_pre.0"])), "model must be a LoadedModel"),
    ("edit", lambda: _enter(graftlens.edit(42, {})), "model must be a LoadedModel"),
    ("learn_mask", lambda: graftlens.learn_mask("m", [], []), "model must be a LoadedModel"),
    ("tuned_lens", lambda: graftlens.tuned_lens("smollm2-135m"), "model must be a LoadedModel"),
    (
        "edge_attribution",
        lambda: graftlens.edge_attribution(MODEL, PathInputs(IDS, IDS), torch.arange(5)),
        "target_ids has 5 entries for a batch of 2",
    ),
    (
        "edge_patched_logits",
        lambda: graftlens.edge_patched_logits(MODEL, PathInputs(IDS + 500, IDS), (0, 0), "logits"),
        "inputs.clean_ids holds token id 512",
    ),
    (
        "faithfulness_curve",
        lambda: graftlens.faithfulness_curve(MODEL, IDS, MASK.T, IDS[:, 0], [(0, 0)], [1], {}),
        "attention_mask [4, 2]",
    ),
    (
        "edge_ablated_logits",
        lambda: graftlens.edge_ablated_logits(MODEL, IDS + 500, None, graftlens.EdgeCircuit([]), {}),
        "input_ids holds token id 512",
    ),
]


@pytest.mark.parametrize(("name", "call", "message"), WRONG_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(WRONG_CALLS)])
def test_a_wrong_argument_is_one_error_naming_it(name, call, message):
    with pytest.raises(InterventionError) as caught:
        call()
    assert str(caught.value).startswith(f"{name}: ") and message in str(caught.value), str(caught.value)


def test_every_public_entry_point_taking_a_model_is_in_the_table():
    import inspect

    taking = {
        n
        for n in graftlens.__all__
        if inspect.isfunction(getattr(graftlens, n))
        and {"model", "recipient"} & set(inspect.signature(getattr(graftlens, n)).parameters)
    }
    assert taking == {name for name, _, _ in WRONG_CALLS}


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (lambda: graftlens.load_model("./no/such/model"), graftlens.ModelLoadError),
        (lambda: graftlens.load_recipe("no-such-recipe"), graftlens.RecipeError),
        (lambda: graftlens.open_run("./no/such/run"), graftlens.StoreError),
        (lambda: graftlens.parse_positions("FE+"), GraftlensError),
        (lambda: graftlens.random_circuit(CIRCUIT, 0, 4, 0), GraftlensError),
    ],
)
def test_the_other_entry_points_raise_their_own_kind(call, kind):
    with pytest.raises(kind):
        call()
