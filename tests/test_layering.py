"""Data flows one way: each unit of the package imports only units of lower layers, no module
import cycle exists, and every package imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import graftlens

SRC = Path(graftlens.__file__).parent

# Lower layers first. A unit may import itself and any unit of a strictly lower layer.
LAYERS: list[set[str]] = [
    {"errors", "lazy"},
    {"fileio", "bounded"},
    {"cache", "provenance", "configfiles", "positions"},
    {"models"},
    {"data"},
    {"eval", "graft", "interventions"},
    {"train"},
    {"results"},
    {"charts"},
    {"methods"},
    {"experiments"},
    {"report"},
    {"commands"},
    {"cli"},
    {"__main__"},
]
# graftlens/__init__.py: the public names, re-exported from the layers below the commands, and
# importable only by the command layers above them.
FACADE = "__init__"
RANK = {unit: k for k, layer in enumerate(LAYERS) for unit in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def _imports(path: Path) -> list[str]:
    """Absolute names of the graftlens modules a file imports (anywhere in it, lazily or not)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from graftlens import charts` imports the module graftlens.charts.
            out += [f"{name}.{a.name}" if _is_module(f"{name}.{a.name}") else name for a in node.names]
    return [n for n in out if n == "graftlens" or n.startswith("graftlens.")]


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _files() -> list[Path]:
    """Every module, and the generated stubs (``__init__.pyi``) whose imports name the packages' public names' homes."""
    return sorted([*SRC.rglob("*.py"), *SRC.rglob("*.pyi")])


def _in_fresh_interpreter(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a new Python process (nothing imported yet); it must succeed."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module_name(f)) for f in _files()}
    assert units - {FACADE} <= set(RANK), f"units without a layer: {sorted(units - {FACADE} - set(RANK))}"


def _edges() -> dict[str, list[str]]:
    """Module → the graftlens modules it imports."""
    return {_module_name(f): _imports(f) for f in _files()}


def _violations(edges: dict[str, list[str]]) -> list[str]:
    wrong = []
    for module, names in edges.items():
        unit = _unit(module)
        for name in names:
            target = _unit(name)
            if target == unit:
                continue
            if target == FACADE and RANK.get(unit, -1) < RANK["commands"]:
                wrong.append(f"{module} imports the package facade ({name})")
            elif target != FACADE and unit != FACADE and RANK[target] >= RANK[unit]:
                wrong.append(f"{module} ({unit}) imports {name} ({target})")
            elif unit == FACADE and RANK[target] >= RANK["commands"]:
                wrong.append(f"the facade imports {name} from the command layer")
    return wrong


def test_no_unit_imports_from_a_layer_above_or_beside_it() -> None:
    wrong = _violations(_edges())
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_backward_or_sideways_import() -> None:
    """The layering check is not vacuous: planted wrong imports are reported."""
    edges = _edges()
    edges["graftlens.models.planted"] = ["graftlens.report.build"]
    edges["graftlens.graft.planted"] = ["graftlens.interventions.hooks"]
    edges["graftlens.data.planted"] = ["graftlens"]
    assert _violations(edges) == [
        "graftlens.models.planted (models) imports graftlens.report.build (report)",
        "graftlens.graft.planted (graft) imports graftlens.interventions.hooks (interventions)",
        "graftlens.data.planted imports the package facade (graftlens)",
    ]


def _kind_imports(edges: dict[str, list[str]]) -> list[str]:
    """Imports from one method's module (``graftlens.methods.<kind>``) to another's: a method
    builds on ``methods.core`` only, so each can be read, changed or removed alone."""
    wrong = []
    for module, names in edges.items():
        if module.startswith("graftlens.methods.") and not module.startswith("graftlens.methods.core"):
            for name in names:
                if name.startswith("graftlens.methods.") and not name.startswith("graftlens.methods.core") and name != module:
                    wrong.append(f"{module} imports {name}")
    return wrong


def test_each_method_imports_only_the_methods_core() -> None:
    assert _kind_imports(_edges()) == []


def test_the_method_rule_sees_one_method_importing_another() -> None:
    edges = {
        "graftlens.methods.planted": ["graftlens.methods.cmap", "graftlens.methods.core.parts"],
        "graftlens.methods.core.planted": ["graftlens.methods.core.parts"],
    }
    assert _kind_imports(edges) == ["graftlens.methods.planted imports graftlens.methods.cmap"]


def test_module_imports_form_no_cycle() -> None:
    graph = {module: set(names) - {module} for module, names in _edges().items()}
    # static_order() is a generator: only consuming it raises CycleError (naming the cycle).
    tuple(graphlib.TopologicalSorter(graph).static_order())
    graph["graftlens.models.loading"].add("graftlens.models.embedded")
    graph["graftlens.models.embedded"].add("graftlens.models.loading")
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        pass
    else:
        raise AssertionError("a planted cycle went unnoticed")


def _private_imports(module: str, package: str, source: str) -> list[str]:
    """``from graftlens.x import _name`` lines of ``module`` (in ``package``, its text
    ``source``): another module's private name."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")
            name = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        if name == "graftlens" or name.startswith("graftlens."):
            out += [f"{module}:{node.lineno} imports {name}.{a.name}" for a in node.names if _private(a.name)]
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_another_modules_private_name() -> None:
    """A leading underscore means "this module's own": another module importing it is a hidden
    dependency (the planted imports show the check sees one, relative or absolute)."""
    wrong = []
    for f in SRC.rglob("*.py"):
        module = _module_name(f)
        package = module if f.name == "__init__.py" else module.rsplit(".", 1)[0]
        wrong += _private_imports(module, package, f.read_text())
    assert not wrong, "\n".join(wrong)
    planted = "from graftlens.models.prefix import _helper, public\nfrom .run import _inner\nfrom graftlens import __version__\n"
    assert _private_imports("graftlens.models.planted", "graftlens.models", planted) == [
        "graftlens.models.planted:1 imports graftlens.models.prefix._helper",
        "graftlens.models.planted:2 imports graftlens.models.run._inner",
    ]


def test_each_package_imports_alone() -> None:
    """Each package, imported first in a fresh set of graftlens modules, loads without a cycle."""
    packages = sorted({_module_name(f) for f in _files() if f.name != "__main__.py"})
    script = (
        "import importlib, sys\n"
        f"for name in {packages!r}:\n"
        "    for m in [m for m in sys.modules if m == 'graftlens' or m.startswith('graftlens.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    done = _in_fresh_interpreter(script)
    assert done.stdout.startswith("ok")


def test_importing_graftlens_changes_no_global_state() -> None:
    """The figures neither switch matplotlib's backend nor load pyplot; knockout registers nothing
    in transformers until a knockout block is entered."""
    script = (
        "import sys, matplotlib\n"
        "matplotlib.use('pdf')\n"
        "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS\n"
        "before = set(ALL_ATTENTION_FUNCTIONS._global_mapping)\n"
        "import graftlens, graftlens.charts, graftlens.methods, graftlens.report, graftlens.interventions, graftlens.cli\n"
        "assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert set(ALL_ATTENTION_FUNCTIONS._global_mapping) == before\n"
        "print('ok')\n"
    )
    _in_fresh_interpreter(script)


def test_the_facade_is_lazy_and_every_public_name_resolves() -> None:
    """``import graftlens`` loads no torch; each name of ``__all__`` resolves to the object of its home module."""
    script = (
        "import sys, graftlens\n"
        "assert 'torch' not in sys.modules, 'import graftlens loaded torch'\n"
        "missing = [n for n in graftlens.__all__ if getattr(graftlens, n, None) is None]\n"
        "assert not missing, missing\n"
        "from graftlens.graft import Graft\n"
        "from graftlens.interventions import capture\n"
        "assert graftlens.Graft is Graft and graftlens.capture is capture\n"
        "declared = {n for names in graftlens._EXPORTS.values() for n in names}\n"
        "assert set(graftlens.__all__) == declared | {'__version__'}\n"
        "print('ok')\n"
    )
    _in_fresh_interpreter(script)


def test_a_recipe_is_read_and_refused_without_torch(tmp_path) -> None:
    """Reading every shipped recipe, and refusing a bad one through the CLI, loads neither torch,
    transformers nor matplotlib (so the error comes at once; their imports take seconds)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ndata: {kind: fake_actors}\nmodels: {pre: {spec: smollm2-135m}}\nrecipient: pre\n"
        "configs:\n  - {name: a, model: pree}\n"
    )
    script = (
        "import sys\n"
        "from graftlens.experiments import load_recipe, shipped_recipes\n"
        "for name in shipped_recipes():\n"
        "    recipe, _ = load_recipe(name)\n"
        "    recipe.expanded(n_layers=None)\n"
        "from graftlens.cli import app\n"
        "try:\n"
        f"    app(['run', {str(bad)!r}])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 2, exc.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    done = _in_fresh_interpreter(script)
    assert "names model 'pree'" in done.stderr and done.stdout.strip().endswith("ok")


def test_no_public_name_is_shadowed_by_a_submodule() -> None:
    """Importing ``package.x`` sets the package attribute ``x`` to the submodule: a public name
    that is also a submodule's name (``graftlens.train.finetune``) would become the module. So no
    declared name is a submodule's, and after importing every submodule, in a fresh interpreter,
    every public name of every package is still its home module's object, never a module."""
    from graftlens.lazy import DECLARING_PACKAGES

    modules = sorted({_module_name(f) for f in SRC.rglob("*.py") if f.name != "__main__.py"})
    clashes = [f"{p}.{n}" for p in DECLARING_PACKAGES for n in _declared(p) if f"{p}.{n}" in modules]
    assert not clashes, f"public names that are also submodules: {clashes}"
    script = (
        "import importlib, types\n"
        "from graftlens.lazy import DECLARING_PACKAGES\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "wrong = []\n"
        "for p in DECLARING_PACKAGES:\n"
        "    package = importlib.import_module(p)\n"
        "    for home, names in package._EXPORTS.items():\n"
        "        for n in names:\n"
        "            got = getattr(package, n)\n"
        "            if isinstance(got, types.ModuleType) or got is not getattr(importlib.import_module(home), n):\n"
        "                wrong.append(f'{p}.{n}')\n"
        "assert not wrong, wrong\n"
        "print('ok')\n"
    )
    assert _in_fresh_interpreter(script).stdout.strip() == "ok"


def _declared(package: str) -> list[str]:
    import importlib

    return [n for names in importlib.import_module(package)._EXPORTS.values() for n in names]


def test_each_stub_is_what_its_declaration_gives() -> None:
    """Each package's ``__init__.pyi`` (what type checkers, editors and the API reference read) is
    generated from its one lazy_exports declaration; `make stubs` rewrites them after a change."""
    from graftlens.lazy import DECLARING_PACKAGES, stub_path, stub_text

    stale = [p for p in DECLARING_PACKAGES if stub_path(p).read_text() != stub_text(p)]
    assert not stale, f"run `make stubs`: the stubs of {stale} differ from their declarations"
    undeclared = sorted(
        _module_name(f)
        for f in SRC.rglob("__init__.py")
        if "lazy_exports(" in f.read_text() and _module_name(f) not in DECLARING_PACKAGES
    )
    assert not undeclared, f"add {undeclared} to graftlens.lazy.DECLARING_PACKAGES"
