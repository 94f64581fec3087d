"""A recipe fuzzer: every shipped recipe, mutated at random, run on tiny random models.

The property: a mutated recipe either runs to the end and its report renders, or it ends with
exactly one ``error:`` line and exit 2, before any result is stored, leaving no run directory
behind. Never a traceback, an "unexpected" error (exit 1), a late failure or a hang.

Each shipped recipe is first made tiny (its models become tiny random llamas with the same
tokenizer, its data and sweeps small enough to score in about a second; finetuned models become a
second tiny model, since finetuning is fuzzed by its own settings' validation), then mutated once:
a value replaced by another type, sign, zero, a huge or tiny number, inf/NaN, an empty list, an
unknown name, unicode or a very long string; a key removed, added or written twice; a value
replaced by nested YAML aliases (up to a "billion laughs").

The examples are seeded (``derandomize``): ``make test`` runs the same ones every time, on a fixed
budget of ``FUZZ_EXAMPLES`` per recipe (about a minute in all). ``pytest --fuzz-examples N`` runs
more (and other) ones. Every failure found becomes a case in ``REGRESSIONS``, named after what
it found.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import signal
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import make_text_model
from graftlens.cli import app
from graftlens.experiments.recipe import SHIPPED, shipped_recipes

runner = CliRunner()

SECONDS_PER_RUN = 60  # a mutated tiny recipe that runs longer than this is a hang

#: Values a mutation writes in place of another: other types, signs, zero, huge and tiny
#: numbers, non-finite ones, empty containers, unknown names, unicode, very long strings.
ODD_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    7,
    10**9,
    -(10**9),
    2**63,
    1e-300,
    1e300,
    0.5,
    -0.5,
    math.inf,
    -math.inf,
    math.nan,
    "",
    " ",
    "0",
    "-1",
    "inf",
    "nan",
    "all",
    "LT",
    "subject",
    "half2",
    "quarter9",
    "no-such-thing",
    "ünïcødé ✓ 盒子",
    "x" * 5000,
    [],
    {},
    [None],
    ["all"],
    [0, 0],
    {"a": 1},
]


def fuzz_examples(request) -> int:
    return int(request.config.getoption("--fuzz-examples"))


# --- making a shipped recipe tiny -----------------------------------------------------------------


def tiny_recipe(name: str, dirs: dict[str, str], circuit: Path) -> dict:
    """Shipped recipe ``name`` on tiny models: same shape, small enough to run in about a second."""
    recipe = yaml.safe_load((SHIPPED / f"{name}.yaml").read_text())
    et = "entity_tracking" in recipe.get("data", {})
    first, second = (dirs["et"], dirs["et2"]) if et else (dirs["text"], dirs["text2"])
    for i, (model, spec) in enumerate(recipe["models"].items()):
        dtype = {"dtype": spec["dtype"]} if "dtype" in spec else {}
        recipe["models"][model] = {"spec": first if i == 0 else second, **dtype}
    data = recipe.setdefault("data", {})
    if "facts" in data:
        data["facts"] = 2
    if "entity_tracking" in data:
        data["entity_tracking"].update(boxes=[3], examples=3)
    ev = recipe.setdefault("eval", {})
    ev.update(bootstrap=20, only_correct=False)
    if "batch_size" in ev:
        ev["batch_size"] = 8
    for sweep in recipe.get("sweeps", []):
        if "window" in sweep:
            sweep["window"] = 2
        tiny_sizes = {"value_fetchers": 2, "position_transmitters": 1, "position_detectors": 1, "structure_readers": 1}
        if sweep["kind"] == "et_circuit":
            sweep.update(sizes=tiny_sizes, random=1, mean_prompts=4)
        if sweep["kind"] == "faithfulness_curve":
            sweep.update(sizes=[2, 8], path_patching_sizes=tiny_sizes, random=1, mean_prompts=4)
        if sweep["kind"] in ("dcm", "circuit_cmap", "circuit_graft", "circuit"):
            sweep["circuit"] = str(circuit)
        if sweep["kind"] == "circuit":
            sweep.update(random=1, mean_prompts=4)
        if sweep["kind"] == "dcm":
            sweep.update(boxes=3, train_examples=4, epochs=1, batch_size=4)
        if sweep["kind"] == "components":
            sweep["layers"] = sweep["layers"][:3]
        if sweep["kind"] == "head_mappings":
            sweep["layers"] = [3]
        if sweep["kind"] == "cmap":
            sweep.update(points=sweep["points"][:2], layers=sweep["layers"][:2], positions=sweep["positions"][:2])
    return recipe


# --- mutations ------------------------------------------------------------------------------------


def paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a recipe (mappings and lists), the root's keys first."""
    out: list[tuple] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out += paths(value, (*prefix, key))
    return out


def _parent(recipe: dict, path: tuple):
    node = recipe
    for key in path[:-1]:
        node = node[key]
    return node


@st.composite
def mutations(draw, recipe: dict) -> tuple[str, str]:
    """``(what was done, the recipe's YAML text)`` after one random mutation."""
    recipe = copy.deepcopy(recipe)
    path = draw(st.sampled_from(paths(recipe)))
    parent, key = _parent(recipe, path), path[-1]
    ops = ["replace", "replace", "replace", "number", "remove", "add key", "empty", "repeat", "twice", "aliases"]
    op = draw(st.sampled_from(ops))
    where = ".".join(map(str, path))
    if op == "replace":
        value = draw(st.sampled_from(ODD_VALUES))
        parent[key] = value
        what = f"{where} = {value!r:.40}"
    elif op == "number":
        value = draw(st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True)))
        parent[key] = value
        what = f"{where} = {value!r}"
    elif op == "remove":
        del parent[key]
        what = f"{where} removed"
    elif op == "add key" and isinstance(parent[key] if isinstance(parent[key], dict) else parent, dict):
        target = parent[key] if isinstance(parent[key], dict) else parent
        extra = draw(st.sampled_from(["unknown_key", "kind", "recipient", "donor", "spec", "ünï", "window"]))
        target[extra] = draw(st.sampled_from(ODD_VALUES))
        what = f"{where}: key {extra!r} added"
    elif op == "empty":
        parent[key] = type(parent[key])() if isinstance(parent[key], (dict, list, str)) else None
        what = f"{where} emptied"
    elif op == "repeat" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
        what = f"{where} repeated"
    elif op == "twice":  # a top-level key written twice, the second time with an odd value
        text = yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False)
        value = draw(st.sampled_from(ODD_VALUES))
        return f"{path[0]} written twice", f"{text}{path[0]}: {json.dumps(value)}\n"
    elif op == "aliases":  # the value becomes 9 ** depth strings written through nested aliases
        depth = draw(st.integers(1, 9))
        parent[key] = PLACEHOLDER
        text = yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False)
        return f"{where} = aliases of depth {depth}", text.replace(PLACEHOLDER, alias_bomb(depth), 1)
    else:  # a key added where there is no mapping, or a mapping's key repeated: a plain replacement
        parent[key] = draw(st.sampled_from(ODD_VALUES))
        what = f"{where} = {parent[key]!r:.40}"
    return what, yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False)


PLACEHOLDER = "ALIAS_PLACEHOLDER"


def alias_bomb(depth: int, width: int = 9) -> str:
    """A YAML flow sequence standing for ``width ** depth`` strings in about ``depth * width``
    aliases: level k is level k-1 once (anchored) and aliased ``width - 1`` more times."""
    text = "&a1 [" + ", ".join(["lol"] * width) + "]"
    for k in range(2, depth + 1):
        text = f"&a{k} [{text}, " + ", ".join([f"*a{k - 1}"] * (width - 1)) + "]"
    return text


# --- the property ---------------------------------------------------------------------------------


class RunTookTooLong(Exception):
    pass


def _alarm(signum, frame):
    raise RunTookTooLong(f"a tiny recipe ran longer than {SECONDS_PER_RUN} s")


def check_property(text: str, folder: Path, what: str) -> str:
    """Run the recipe ``text`` in ``folder``; assert the property; return "ran" or "refused"."""
    folder.mkdir(parents=True, exist_ok=True)
    path, out = folder / "recipe.yaml", folder / "run"
    path.write_text(text, encoding="utf-8")
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_RUN)
    try:
        result = runner.invoke(app, ["run", str(path), "--out", str(out)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    output = result.output
    context = f"mutation: {what}\n--- output:\n{output[-3000:]}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{context}\n--- raised {type(result.exception).__name__}: {result.exception}")
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    if result.exit_code == 0:
        assert not errors, context
        report = out / "report.html"
        assert report.is_file() and "<html" in report.read_text(encoding="utf-8")[:500].lower(), context
        return "ran"
    assert result.exit_code == 2, context
    assert len(errors) == 1, context
    tail = output[output.index(errors[0]) :].strip().splitlines()
    assert len(tail) == 1, f"the error is not one line\n{context}"
    assert not out.exists(), f"a refused run left {sorted(p.name for p in out.iterdir())} behind\n{context}"
    return "refused"


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, text_model_dir, donor_dir, et_model_dir) -> dict[str, str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(et_model_dir)
    et2 = tmp_path_factory.mktemp("fuzz-et2")
    make_text_model("llama", tokenizer, seed=5).save_pretrained(et2)
    tokenizer.save_pretrained(et2)
    return {"text": text_model_dir, "text2": donor_dir, "et": et_model_dir, "et2": str(et2)}


@pytest.fixture(scope="module")
def tiny_circuit(tmp_path_factory) -> Path:
    """A circuit of the tiny models' heads (4 layers × 4 heads), at each group's positions."""
    groups = {
        "value_fetchers": ("LT", [[3, 0], [3, 2]]),
        "position_transmitters": ("LT", [[2, 1]]),
        "position_detectors": ("query_box", [[1, 3]]),
        "structure_readers": ("correct_box", [[0, 2]]),
    }
    path = tmp_path_factory.mktemp("fuzz-circuit") / "circuit.json"
    path.write_text(json.dumps({"groups": {g: {"positions": p, "heads": h} for g, (p, h) in groups.items()}}))
    return path


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_runs_tiny(name, tiny_dirs, tiny_circuit, tmp_path, graftlens_cache):
    """The fuzzer's starting points run: a mutation that changes nothing that matters must run too."""
    text = yaml.safe_dump(tiny_recipe(name, tiny_dirs, tiny_circuit), allow_unicode=True, sort_keys=False)
    assert check_property(text, tmp_path, "none") == "ran"


@pytest.mark.parametrize("name", shipped_recipes())
def test_mutated_recipes_run_or_fail_with_one_line(name, tiny_dirs, tiny_circuit, tmp_path, graftlens_cache, request):
    recipe = tiny_recipe(name, tiny_dirs, tiny_circuit)
    seen: list[str] = []
    tried = itertools.count()

    @settings(
        max_examples=fuzz_examples(request),
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutations(recipe))
    def property_holds(mutation: tuple[str, str]) -> None:
        what, text = mutation
        seen.append(check_property(text, tmp_path / f"m{next(tried)}", what))

    property_holds()
    request.node.user_properties += [("ran", seen.count("ran")), ("refused", seen.count("refused"))]


def test_an_alias_bomb_is_refused_at_once(tmp_path, tiny_dirs, tiny_circuit):
    """Ten lines of nested aliases standing for 9**9 values: one error line within a second, not a
    hang (every step after loading would walk the expanded values)."""
    import time

    recipe = tiny_recipe("position-grafting", tiny_dirs, tiny_circuit)
    recipe["name"] = PLACEHOLDER
    text = yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False).replace(PLACEHOLDER, alias_bomb(9), 1)
    t0 = time.perf_counter()
    assert check_property(text, tmp_path, "alias bomb") == "refused"
    assert time.perf_counter() - t0 < 1.0
    path = tmp_path / "recipe.yaml"
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "again")])
    assert "aliases expand to more than 100,000 values" in result.output


#: What the fuzzer found, each kept as a case: (name, shipped recipe, mutation as path → value).
#: Each was a late failure (results stored, then an error), a crash or a hang; each is refused now.
REGRESSIONS: list[tuple[str, str, tuple, object]] = [
    # IndexError after loading the models: an empty layer list selected no layer.
    ("head-mappings-with-no-layers", "head-mappings", ("sweeps", 0, "layers"), []),
    # A billion random circuits: the expansion filled the memory until the process was killed.
    ("et-circuit-with-a-billion-random-circuits", "et-circuit", ("sweeps", 0, "random"), 10**9),
    # The default box counts 2..7 with 3 prompts each in batches of 8: batches straddled two box
    # counts, and mean ablation failed after 1,170 of 1,206 prompts were scored.
    ("et-circuit-batches-straddling-box-counts", "et-circuit", ("data", "entity_tracking", "boxes"), [2, 3, 4, 5, 6, 7]),
    # A pair kind named twice gave every prompt of it twice: the store refused the second copy
    # after 136 of 204 prompts were scored, as "the results store cannot be read".
    (
        "et-dcm-with-a-pair-kind-twice",
        "et-dcm",
        ("data", "entity_tracking", "pairs"),
        ["position", "object", "box_label", "box_label"],
    ),
    ("entity-tracking-with-a-box-count-twice", "entity-tracking", ("data", "entity_tracking", "boxes"), [3, 3]),
    # A seed NumPy cannot take.
    ("et-dcm-with-a-huge-seed", "et-dcm", ("sweeps", 0, "seed"), 2**63),
]

#: Mutations that must run to the end (each once failed late).
RUN_REGRESSIONS: list[tuple[str, str, tuple, object]] = [
    # A 5000-character panel name became a figure file name too long for the file system: the
    # report failed after every result was stored.
    ("answer-rate-with-a-very-long-panel", "answer-rate", ("sweeps", 1, "panel"), "x" * 5000),
]


@pytest.mark.parametrize(("case", "name", "path", "value"), RUN_REGRESSIONS, ids=[r[0] for r in RUN_REGRESSIONS])
def test_found_by_the_fuzzer_and_runs(case, name, path, value, tiny_dirs, tiny_circuit, tmp_path, graftlens_cache):
    recipe = tiny_recipe(name, tiny_dirs, tiny_circuit)
    _parent(recipe, path)[path[-1]] = value
    assert check_property(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), tmp_path, case) == "ran"


@pytest.mark.parametrize(("case", "name", "path", "value"), REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_found_by_the_fuzzer(case, name, path, value, tiny_dirs, tiny_circuit, tmp_path, graftlens_cache):
    recipe = tiny_recipe(name, tiny_dirs, tiny_circuit)
    _parent(recipe, path)[path[-1]] = value
    assert check_property(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), tmp_path, case) == "refused"
