"""One word per concept: recipe keys renamed to the glossary's words are still read, with exactly
the meaning they had and one notice per recipe; the public API names the intervened-on model
``recipient`` and patching inputs ``clean``/``corrupted``."""

from __future__ import annotations

import inspect
import textwrap
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import graftlens
from graftlens.cli import app
from graftlens.errors import RecipeError, RenamedRecipeKey
from graftlens.experiments import load_recipe
from graftlens.methods import method_for

runner = CliRunner()


def _recipe(path: Path, model_dir: str, data_dir: Path, old: bool) -> Path:
    panel = "group" if old else "panel"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: words
            data: {{dir: {data_dir}}}
            models:
              pre: {{spec: {model_dir}}}
              other: {{spec: {model_dir}}}
            recipient: pre
            eval: {{batch_size: 4, bootstrap: 50}}
            configs:
              - {{name: PRE, model: pre, {panel}: references}}
            sweeps:
              - {{kind: positions, donor: other, sets: [FE, LT], {panel}: by position}}
              - {{kind: components, donor: other, components: [mlp], layers: [all], {panel}: by component}}
            """
        )
    )
    return path


def _loaded(path: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe, _ = load_recipe(path)
    return recipe, [str(w.message) for w in caught if issubclass(w.category, RenamedRecipeKey)]


def test_an_old_key_means_what_it_meant_with_one_notice(tmp_path, text_model_dir, small_facts) -> None:
    data = small_facts.save(tmp_path / "facts")
    old, notices = _loaded(_recipe(tmp_path / "old.yaml", text_model_dir, data, old=True))
    new, none = _loaded(_recipe(tmp_path / "new.yaml", text_model_dir, data, old=False))
    assert old == new and old.content_hash() == new.content_hash()
    assert [(c.name, c.panel) for c in old.expanded(n_layers=None)] == [(c.name, c.panel) for c in new.expanded(n_layers=None)]
    assert notices == ["old.yaml: recipe key 'group' is now 'panel' (same meaning)"] and none == []


@pytest.mark.parametrize(
    ("kind", "old", "new"),
    [
        ("et_circuit", {"clean": "ET"}, {"plain": "ET"}),
        ("dcm", {"circuit": "c.json", "groups": ["value_fetchers"]}, {"circuit": "c.json", "head_groups": ["value_fetchers"]}),
        (
            "circuit_cmap",
            {"donor": "et", "circuit": "c.json", "groups": ["value_fetchers"], "group": "x"},
            {"donor": "et", "circuit": "c.json", "head_groups": ["value_fetchers"], "panel": "x"},
        ),
    ],
)
def test_each_renamed_sweep_key_is_read_as_its_new_name(kind, old, new) -> None:
    sweep = method_for(kind).sweep
    with pytest.warns(RenamedRecipeKey):
        was = sweep.model_validate({"kind": kind, **old})
    assert was == sweep.model_validate({"kind": kind, **new})


def test_a_sweep_that_renames_a_key_of_its_own_keeps_its_bases_renames() -> None:
    """``renamed`` merges over the class hierarchy: every sweep reads ``group`` as ``panel``,
    whatever it renames itself (and so does a new sweep that renames something else)."""
    from typing import ClassVar, Literal

    from graftlens.methods.core.parts import Sweep

    class Renaming(Sweep):
        renamed: ClassVar[dict[str, str]] = {"old_width": "width"}
        kind: Literal["renaming"] = "renaming"
        width: int = 1
        panel: str = "p"

    with pytest.warns(RenamedRecipeKey):
        read = Renaming.model_validate({"group": "x", "old_width": 3})
    assert (read.panel, read.width) == ("x", 3)
    for kind in ("et_circuit", "dcm", "circuit_cmap", "knockout", "positions"):
        assert method_for(kind).sweep.all_renamed()["group"] == "panel", kind


def test_old_and_new_key_together_is_an_error(tmp_path, text_model_dir, small_facts) -> None:
    path = _recipe(tmp_path / "both.yaml", text_model_dir, small_facts.save(tmp_path / "facts"), old=False)
    path.write_text(path.read_text().replace("panel: by position", "panel: by position, group: again"))
    with pytest.raises(RecipeError, match="'group' is the deprecated name of 'panel': write only 'panel'"):
        load_recipe(path)


def test_the_cli_prints_one_note_and_scores_the_same(tmp_path, text_model_dir, small_facts, graftlens_cache) -> None:
    data = small_facts.save(tmp_path / "facts")
    exports = {}
    for old in (True, False):
        recipe = _recipe(tmp_path / f"{old}.yaml", text_model_dir, data, old)
        out = tmp_path / f"run-{old}"
        result = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
        assert result.exit_code == 0, result.output
        notes = [line for line in result.output.splitlines() if line.startswith("note:")]
        assert notes == (["note: True.yaml: recipe key 'group' is now 'panel' (same meaning)"] if old else [])
        exported = runner.invoke(app, ["export", str(out), "--csv", str(tmp_path / f"{old}.csv")])
        assert exported.exit_code == 0, exported.output
        exports[old] = (tmp_path / f"{old}.csv").read_bytes()
    assert exports[True] == exports[False]


def test_the_public_api_says_recipient_and_clean_corrupted() -> None:
    """No public function takes ``base`` for the model it intervenes on, and path patching's
    inputs are clean and corrupted, as activation patching's are."""
    for name in graftlens.__all__:
        obj = getattr(graftlens, name)
        if callable(obj):
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            assert "base" not in params, name
    fields = list(inspect.signature(graftlens.PathInputs).parameters)
    assert fields[:2] == ["clean_ids", "corrupted_ids"]
    assert "corrupted_positions" in inspect.signature(graftlens.path_patching).parameters


def test_no_public_intervention_takes_a_cache_prefix_or_pass_size() -> None:
    """How fast is not a parameter of what is computed: the fast paths are objects the execution
    owns (a plain run, a shared prefix), not arguments of public functions."""
    import ast

    words = ("cache", "prefix", "per_pass", "share_", "one_column", "column_runs", "kept")
    root = Path(graftlens.__file__).parent
    found = []
    for package in ("interventions", "graft"):
        for path in sorted((root / package).glob("*.py")):
            if path.name.startswith("_"):
                continue
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                    a = node.args
                    for arg in a.posonlyargs + a.args + a.kwonlyargs:
                        if any(w in arg.arg for w in words) or arg.arg == "run":
                            found.append(f"{package}/{path.name}:{node.name}({arg.arg})")
    assert found == []


# Run ids of shipped recipes as the code before the renaming computed them: renaming a recipe
# key must not change a run id, or a run started before could not be resumed.
RUN_IDS = {
    "demo": "25ac80c1173d2662",
    "direction": "7ff5512dd5befc1f",
    "et-circuit": "e3d3dbff63201d83",
    "et-dcm": "a56131ee521c4ddd",
    "hybrid": "d207c11e7e2575af",
    "knockout": "5c956b593276286b",
}


@pytest.mark.parametrize("name", sorted(RUN_IDS))
def test_renamed_keys_change_no_run_id(name) -> None:
    recipe, _ = load_recipe(name)
    assert recipe.content_hash() == RUN_IDS[name]
