"""Functions a reader can hold: none in src over 60 lines of code (its docstring aside) and none
above complexity 15 (ruff's C901, in ``make lint``; checked here too, with a planted case)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "graftlens"
MAX_LINES = 60


def _code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the last one."""
    body = function.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def _long_functions(source: str, where: str) -> list[str]:
    return [
        f"{where}:{node.lineno} {node.name} ({_code_lines(node)} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(node) > MAX_LINES
    ]


def test_no_function_in_src_is_over_60_lines() -> None:
    found = [f for path in sorted(SRC.rglob("*.py")) for f in _long_functions(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_length_check_counts_code_not_the_docstring() -> None:
    docstring = '    """' + "\n".join(["A long docstring."] * 80) + '"""\n'
    short = "def f():\n" + docstring + "".join(f"    x{i} = {i}\n" for i in range(60))
    long = "def g():\n" + "".join(f"    x{i} = {i}\n" for i in range(61))
    assert _long_functions(short, "short") == []
    assert _long_functions(long, "long") == ["long:1 g (61 lines)"]


def test_no_function_is_above_complexity_15_and_the_lint_rule_sees_one(tmp_path) -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff, "ruff is not installed: pip install -e '.[docs]'"
    done = subprocess.run([ruff, "check", "--select", "C901", "src"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(16))
    planted = tmp_path / "planted.py"
    planted.write_text("def tangled(x):\n" + branches + "    return -1\n")
    # the project's own configuration (max-complexity 15), applied to a file outside it
    config = ["--config", str(ROOT / "pyproject.toml")]
    seen = subprocess.run([ruff, "check", *config, "--select", "C901", str(planted)], capture_output=True, text=True)
    assert seen.returncode == 1 and "tangled" in seen.stdout and "17 > 15" in seen.stdout, seen.stdout


def _defined_twice(modules: dict[str, str]) -> dict[str, list[str]]:
    """Class names and CamelCase type aliases defined at the top level of more than one module."""
    homes: dict[str, list[str]] = {}
    for where, source in modules.items():
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name) and t.id[:1].isupper() and not t.id.isupper()]
            else:
                continue
            for name in names:
                homes.setdefault(name, []).append(where)
    return {name: wheres for name, wheres in homes.items() if len(wheres) > 1}


def test_each_class_and_type_alias_has_one_definition() -> None:
    """One ``Head``, one ``Progress``, one ``DonorLike``...: a name a reader meets means one thing."""
    modules = {str(p.relative_to(ROOT)): p.read_text() for p in sorted(SRC.rglob("*.py"))}
    assert _defined_twice(modules) == {}


def test_the_definition_check_sees_a_name_defined_twice() -> None:
    modules = {"a.py": "Head = tuple[int, int]\nclass Thing: ...\n", "b.py": "Head = tuple[int, int]\nLIMIT = 3\n"}
    assert _defined_twice(modules) == {"Head": ["a.py", "b.py"]}


def test_architecture_facts_live_in_the_adapters() -> None:
    """GPT-2's ``Conv1D`` layout (weights ``[in, out]``) is known to `models.adapters` alone."""
    found = [str(p.relative_to(ROOT)) for p in sorted(SRC.rglob("*.py")) if "Conv1D" in p.read_text()]
    assert found == ["src/graftlens/models/adapters.py"]


def _local_stdlib_imports(source: str, where: str) -> list[str]:
    """Imports of the standard library inside a function: nothing heavy to defer, no layer to
    keep apart; they belong at the top of the module."""
    found = set()
    for function in ast.walk(ast.parse(source)):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    if any(name.split(".")[0] in sys.stdlib_module_names for name in names) and not getattr(node, "level", 0):
                        found.add(f"{where}:{node.lineno}")
    return sorted(found)


def test_no_function_imports_the_standard_library_locally() -> None:
    found = [f for path in sorted(SRC.rglob("*.py")) for f in _local_stdlib_imports(path.read_text(), path.name)]
    assert found == []


def test_the_local_import_check_sees_one() -> None:
    source = "import json\n\ndef f():\n    import gc\n    from torch import nn\n    return gc, nn\n"
    assert _local_stdlib_imports(source, "m.py") == ["m.py:4"]
