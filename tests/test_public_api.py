"""The public API: the library's sweeps equal one call per configuration on every family, and the
errors a user catches are the five documented kinds."""

from __future__ import annotations

import pytest
import torch

import graftlens
from conftest import FAMILIES, make_tiny_model
from graftlens import Graft


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Three left-padded prompts of up to 7 tokens, each with an ``FE`` span of two tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :1] = 0
    spans = [{"FE": (1, 3)}, {"FE": (0, 2)}, {"FE": (2, 4)}]
    return ids, mask, spans


CONFIGS = {
    "PRE": [],
    "LT attn": [Graft("ft", "attn", "all", "LT")],
    "LT o+mlp half2": [Graft("ft", "o+mlp", "half2", "LT")],
    "LT everything": [Graft("ft", "all", "all", "LT")],
    "FE+LT": [Graft("ft", "all", "all", "FE+LT")],
    "FE": [Graft("ft", "all", "all", "FE")],
    "(FE+LT)^C": [Graft("ft", "all", "all", "(FE+LT)^C")],
    "FE mlp, LT lm_head": [Graft("ft", "mlp", "all", "FE"), Graft("ft", "lm_head", "all", "LT")],
    "lm_head at FE": [Graft("ft", "lm_head", "all", "FE")],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_graft_sweep_equals_one_grafted_forward_per_configuration(family: str) -> None:
    base, ft = make_tiny_model(family, 0), make_tiny_model(family, 1)
    ids, mask, spans = _batch()
    swept = graftlens.graft_sweep(base, {"ft": ft}, CONFIGS, ids, mask, spans=spans)
    assert list(swept) == list(CONFIGS)
    for name, rules in CONFIGS.items():
        one = graftlens.grafted_forward(base, {"ft": ft}, rules, ids, mask, spans=spans)[:, -1]
        torch.testing.assert_close(swept[name], one, atol=2e-5, rtol=0, msg=f"{family} {name}")
    # The configurations differ from each other (a sweep that returned one result for all would pass above only by luck).
    assert not torch.allclose(swept["PRE"], swept["LT everything"])


def test_graft_sweep_shares_prefixes_in_chunks_of_variants(monkeypatch) -> None:
    """More configurations than one pass holds are split into several passes, each still exact."""
    import graftlens.graft.sweep as sweep

    monkeypatch.setattr(sweep, "VARIANT_ROWS", 6)  # 2 configurations of 3 prompts per pass
    base, ft = make_tiny_model("llama", 0), make_tiny_model("llama", 1)
    ids, mask, spans = _batch(1)
    swept = graftlens.graft_sweep(base, {"ft": ft}, CONFIGS, ids, mask, spans=spans)
    for name, rules in CONFIGS.items():
        one = graftlens.grafted_forward(base, {"ft": ft}, rules, ids, mask, spans=spans)[:, -1]
        torch.testing.assert_close(swept[name], one, atol=2e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_cmap_sweep_equals_one_cross_model_patch_per_configuration(family: str) -> None:
    base, ft = make_tiny_model(family, 0), make_tiny_model(family, 1)
    ids, mask, spans = _batch(2)
    configs = {
        "z all": {f"z.{layer}": None for layer in range(4)},
        "z half2": {"z.2": None, "z.3": None},
        "z.1 heads 0, 3": {"z.1": [0, 3]},
        "q k v of 2": {"q.2": None, "k.2": None, "v.2": None},
        "resid_pre.3": {"resid_pre.3": None},
    }
    points = sorted({p for c in configs.values() for p in c})
    _, cache = graftlens.run_with_cache(ft, ids, mask, points)
    for positions in ("LT", "FE+LT", None):
        swept = graftlens.cmap_sweep(base, ft, configs, ids, mask, positions=positions, spans=spans)
        for name, heads in configs.items():
            one = graftlens.cross_model_patched_logits(base, cache, ids, mask, heads, positions, spans=spans)[:, -1]
            torch.testing.assert_close(swept[name], one, atol=2e-5, rtol=0, msg=f"{family} {name} {positions}")


def test_cmap_sweep_of_a_model_into_itself_changes_nothing() -> None:
    base = make_tiny_model("qwen2", 0)
    ids, mask, spans = _batch(3)
    swept = graftlens.cmap_sweep(base, base, {"z": {"z.1": None, "z.2": None}}, ids, mask, positions="FE", spans=spans)
    torch.testing.assert_close(swept["z"], graftlens.run_logits(base, ids, mask)[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_knockout_sweep_equals_one_knockout_per_window(family: str) -> None:
    model = make_tiny_model(family, 0)
    ids, mask, spans = _batch(4)
    windows = [[0, 1], [1, 2, 3], [3], []]
    swept = graftlens.knockout_sweep(model, ids, mask, windows, sources="FE", spans=spans)
    assert swept.shape == (4, 3, model.config.vocab_size)
    for w, logits in zip(windows, swept):
        with graftlens.attention_knockout(model, w, sources="FE", targets="LT", spans=spans):
            one = graftlens.run_logits(model, ids, mask)[:, -1]
        torch.testing.assert_close(logits, one, atol=2e-5, rtol=0, msg=f"{family} {w}")


def test_grafted_forward_last_only_is_the_last_column_of_the_full_pass() -> None:
    base, ft = make_tiny_model("gpt2", 0), make_tiny_model("gpt2", 1)
    ids, mask, spans = _batch(5)
    rules = [Graft("ft", "all", "all", "FE+LT")]
    full = graftlens.grafted_forward(base, {"ft": ft}, rules, ids, mask, spans=spans)
    last = graftlens.grafted_forward(base, {"ft": ft}, rules, ids, mask, spans=spans, last_only=True)
    assert last.shape == (3, 1, full.shape[-1])
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=0)


# ---- errors -------------------------------------------------------------------------------------


def _wrong_calls():
    base, other = make_tiny_model("llama", 0), make_tiny_model("gpt2", 0)
    ids, mask, spans = _batch()
    return [
        (
            "unknown component",
            graftlens.InterventionError,
            lambda: graftlens.grafted_forward(base, {"ft": base}, [Graft("ft", "qq", "all", "LT")], ids, mask),
        ),
        (
            "layer out of range",
            graftlens.InterventionError,
            lambda: graftlens.graft_sweep(base, {"ft": base}, {"x": [Graft("ft", "q", "9", "LT")]}, ids, mask),
        ),
        (
            "span missing",
            graftlens.InterventionError,
            lambda: graftlens.grafted_forward(base, {"ft": base}, [Graft("ft", "q", "all", "title")], ids, mask, spans=spans),
        ),
        (
            "donor of another family",
            graftlens.InterventionError,
            lambda: graftlens.cmap_sweep(base, other, {"z": {"z.0": None}}, ids, mask),
        ),
        (
            "window outside the model",
            graftlens.InterventionError,
            lambda: graftlens.knockout_sweep(base, ids, mask, [[0, 12]], sources="0"),
        ),
        (
            "mask of another shape",
            graftlens.InterventionError,
            lambda: graftlens.cmap_sweep(base, base, {"z": {"z.0": None}}, ids, mask[:, 1:]),
        ),
        ("a malformed selector", graftlens.InterventionError, lambda: graftlens.parse_positions("FE+")),
        (
            "an unknown point",
            graftlens.InterventionError,
            lambda: graftlens.cmap_sweep(base, base, {"z": {"zz.0": None}}, ids, mask),
        ),
        ("an unknown model", graftlens.ModelLoadError, lambda: graftlens.load_model("/no/such/model")),
        ("an unknown recipe", graftlens.RecipeError, lambda: graftlens.load_recipe("no-such-recipe")),
        ("no run there", graftlens.StoreError, lambda: graftlens.open_run("/no/such/run")),
    ]


@pytest.mark.parametrize("case", range(11))
def test_each_wrong_call_raises_one_of_the_five_documented_errors(case: int) -> None:
    what, kind, call = _wrong_calls()[case]
    with pytest.raises(kind) as info:
        call()
    assert isinstance(info.value, graftlens.GraftlensError), what


def test_every_error_class_is_one_of_the_five_kinds() -> None:
    """Each graftlens error class that a module defines is a subclass of exactly one documented kind."""
    import importlib
    import inspect
    import pkgutil

    kinds = (
        graftlens.ModelLoadError,
        graftlens.RecipeError,
        graftlens.DataError,
        graftlens.InterventionError,
        graftlens.StoreError,
    )
    seen = {}
    for info in pkgutil.walk_packages(graftlens.__path__, "graftlens."):
        if info.name.endswith("__main__") or ".distributed" in info.name:
            continue
        for _, cls in inspect.getmembers(importlib.import_module(info.name), inspect.isclass):
            if issubclass(cls, graftlens.GraftlensError) and cls is not graftlens.GraftlensError and cls not in kinds:
                seen[cls.__qualname__] = [k.__name__ for k in kinds if issubclass(cls, k)]
    assert len(seen) >= 20
    assert {name: ks for name, ks in seen.items() if len(ks) != 1} == {}


def test_nothing_raises_the_bare_root_error() -> None:
    """Every error graftlens raises is of one of the five kinds a user catches, never the bare root."""
    import re
    from pathlib import Path

    src = Path(graftlens.__file__).parent
    bare = [
        f"{p.relative_to(src)}:{i}"
        for p in src.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"raise GraftlensError\b", line)
    ]
    assert bare == []
