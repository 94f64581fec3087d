"""Right padding never returns a padding column's logits: every public entry point that reads the
last column as each prompt's last token refuses a right-padded batch (what SmolLM2's and every
Llama-family tokenizer give by default) in one graftlens error before any forward pass; the full
logits (``last_only=False``) of a right-padded batch are each prompt's own at its real tokens."""

from __future__ import annotations

import pytest
import torch

import graftlens
from conftest import make_tiny_model
from graftlens import Graft, PathInputs
from graftlens.errors import GraftlensError

# Two prompts of 4 and 2 tokens, padded on the right (pad id 0) and on the left.
RIGHT_IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
RIGHT_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
LEFT_IDS = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
LEFT_MASK = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
TARGETS = torch.tensor([3, 4])


def _means(m):
    return graftlens.head_means(m, [(torch.tensor([[5, 6, 7, 8]]), None)])


#: Every public entry point that reads a last position, called on the right-padded batch.
LAST_POSITION_READS = {
    "run_logits": lambda m, d, means: graftlens.run_logits(m, RIGHT_IDS, RIGHT_MASK, last_only=True),
    "run_with_cache": lambda m, d, means: graftlens.run_with_cache(m, RIGHT_IDS, RIGHT_MASK, ["z.1"], last_only=True),
    "grafted_forward": lambda m, d, means: graftlens.grafted_forward(
        m, {"d": d}, [Graft("d", "mlp", "all", "LT")], RIGHT_IDS, RIGHT_MASK, last_only=True
    ),
    "graft_sweep": lambda m, d, means: graftlens.graft_sweep(
        m, {"d": d}, {"x": [Graft("d", "mlp", "all", "LT")]}, RIGHT_IDS, RIGHT_MASK
    ),
    "grafted_generate": lambda m, d, means: graftlens.grafted_generate(m, {"d": d}, [], RIGHT_IDS, RIGHT_MASK, [{}, {}], 2),
    "patched_logits": lambda m, d, means: graftlens.patched_logits(m, RIGHT_IDS, RIGHT_MASK, [], last_only=True),
    "cross_model_patched_logits": lambda m, d, means: graftlens.cross_model_patched_logits(
        m, {}, RIGHT_IDS, RIGHT_MASK, {}, last_only=True
    ),
    "cmap_sweep": lambda m, d, means: graftlens.cmap_sweep(m, d, {"x": {"z.1": None}}, RIGHT_IDS, RIGHT_MASK),
    "activation_patching": lambda m, d, means: graftlens.activation_patching(
        m, RIGHT_IDS, RIGHT_IDS, TARGETS, attention_mask=RIGHT_MASK
    ),
    "attribution_patching": lambda m, d, means: graftlens.attribution_patching(
        m, RIGHT_IDS, RIGHT_IDS, TARGETS, attention_mask=RIGHT_MASK
    ),
    "knockout_sweep": lambda m, d, means: graftlens.knockout_sweep(m, RIGHT_IDS, RIGHT_MASK, [[0, 1]], sources="0"),
    "mean_ablated_logits": lambda m, d, means: graftlens.mean_ablated_logits(m, RIGHT_IDS, RIGHT_MASK, None, means),
    "point_logits": lambda m, d, means: graftlens.point_logits(m, RIGHT_IDS, RIGHT_MASK, ["resid_post.1"]),
    "path_patching": lambda m, d, means: graftlens.path_patching(
        m, PathInputs(RIGHT_IDS, RIGHT_IDS, RIGHT_MASK, RIGHT_MASK), TARGETS
    ),
    "edge_attribution": lambda m, d, means: graftlens.edge_attribution(
        m, PathInputs(RIGHT_IDS, RIGHT_IDS, RIGHT_MASK, RIGHT_MASK), TARGETS
    ),
}


@pytest.mark.parametrize("entry", sorted(LAST_POSITION_READS))
def test_a_right_padded_batch_is_refused_where_the_last_column_is_read(entry) -> None:
    model, donor = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    call, means = LAST_POSITION_READS[entry], _means(model)
    forwards = []
    hook = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        with pytest.raises(GraftlensError, match="right-padded .* pad on the left") as raised:
            call(model, donor, means)
    finally:
        hook.remove()
    assert "\n" not in str(raised.value) and not forwards


def test_the_refusal_names_a_real_tokenizers_default_right_padding(text_model_dir) -> None:
    """A batch made by a tokenizer that pads on the right, as a researcher would make it."""
    loaded = graftlens.load_model(text_model_dir)
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    batch = tokenizer(["the movie stars", "a"], return_tensors="pt", padding=True)
    with pytest.raises(GraftlensError, match="row 1 ends in padding"):
        graftlens.run_logits(loaded, batch["input_ids"], batch["attention_mask"], last_only=True)


def test_full_logits_of_a_right_padded_batch_are_each_prompts_own(family) -> None:
    """With ``last_only=False`` nothing reads the last column: right padding gives, at every real
    token, the logits of the left-padded batch (and of the prompt alone)."""
    model, donor = make_tiny_model(family, 0), make_tiny_model(family, 1)
    right = graftlens.run_logits(model, RIGHT_IDS, RIGHT_MASK)
    left = graftlens.run_logits(model, LEFT_IDS, LEFT_MASK)
    alone = graftlens.run_logits(model, torch.tensor([[9, 10]]))
    torch.testing.assert_close(right[1, :2], left[1, 2:], atol=1e-4, rtol=0)
    torch.testing.assert_close(right[1, :2], alone[0], atol=1e-4, rtol=0)
    rules = [Graft("d", "mlp", "all", "LT")]
    right = graftlens.grafted_forward(model, {"d": donor}, rules, RIGHT_IDS, RIGHT_MASK)
    left = graftlens.grafted_forward(model, {"d": donor}, rules, LEFT_IDS, LEFT_MASK)
    torch.testing.assert_close(right[1, :2], left[1, 2:], atol=1e-4, rtol=0)
    torch.testing.assert_close(right[0], left[0], atol=1e-4, rtol=0)
