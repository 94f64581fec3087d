"""Adding a method is adding one module: the example method, copied into a copy of the package,
runs from a recipe through the runner, the store and the report without any other file changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import graftlens

EXAMPLE = Path(__file__).parents[1] / "examples" / "ablation.py"

SCRIPT = """
import json, sys, torch
from graftlens.experiments import load_recipe, run_recipe
from graftlens.results import load_run
from graftlens.methods import method_for
from graftlens.report import write_report
recipe = sys.argv[1]
run_recipe(load_recipe(recipe)[0], sys.argv[2], recipe_path=recipe)
write_report(sys.argv[2])
run = load_run(sys.argv[2])
print(json.dumps({
    "kinds": sorted({c.kind for c in run.configs}),
    "names": [c.name for c in run.configs],
    "rows": len(run.rows),
    "expected": run.expected_rows,
    "method": type(method_for("ablation")).__name__,
    "by_config": {name: [r.target_prob for r in rows] for name, rows in run.by_config.items()},
}))
"""


def test_one_new_module_adds_a_method(tmp_path, text_model_dir, graftlens_cache) -> None:
    package = tmp_path / "src" / "graftlens"
    shutil.copytree(Path(graftlens.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(EXAMPLE, package / "methods" / "ablation.py")
    recipe = tmp_path / "ablate.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            name: tiny-ablation
            data: {{known_facts: shipped}}
            models:
              pre: {{spec: {text_model_dir}}}
            recipient: pre
            eval: {{batch_size: 64, bootstrap: 50}}
            configs:
              - {{name: clean, model: pre}}
            sweeps:
              - {{kind: ablation, point: mlp_out, positions: subject}}
              - {{kind: ablation, point: attn_out, positions: "all^C", panel: nothing}}
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src"), "GRAFTLENS_CACHE": str(graftlens_cache)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(recipe), str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["method"] == "ZeroAblation"
    assert out["kinds"] == ["ablation", "configs"]
    assert out["names"][:3] == ["clean", "ablate mlp_out.0 @ subject", "ablate mlp_out.1 @ subject"]
    assert out["rows"] == out["expected"] > 0
    clean = out["by_config"]["clean"]
    # Zeroing at no position is the model itself; zeroing the subject's MLP outputs is not.
    assert all(out["by_config"][f"ablate attn_out.{layer} @ all^C"] == clean for layer in range(4))
    assert any(out["by_config"][f"ablate mlp_out.{layer} @ subject"] != clean for layer in range(4))
    report = (tmp_path / "run" / "report.html").read_text()
    assert "tiny-ablation: ablation" in report and "tiny-ablation: nothing" in report
    assert len(list((tmp_path / "run" / "figures").glob("*.png"))) == 2


def test_the_installed_package_lacks_the_example() -> None:
    """The example stays an example: the shipped registry has no ``ablation`` kind."""
    from graftlens.methods import methods

    assert "ablation" not in {m.kind for m in methods()}


def test_each_method_module_registers_one_kind_named_after_it() -> None:
    """methods/ holds one module per kind, named after it; shared helpers live in methods/core."""
    import pkgutil

    import graftlens.methods as package
    from graftlens.methods import methods

    by_module: dict[str, list[str]] = {}
    for m in methods():
        by_module.setdefault(type(m).__module__, []).append(m.kind)
    modules = [info.name for info in pkgutil.iter_modules(package.__path__) if not info.ispkg]
    assert sorted(modules) == sorted(name.rsplit(".", 1)[1] for name in by_module)
    for module, kinds in by_module.items():
        assert kinds == [module.rsplit(".", 1)[1]], f"{module} registers {kinds}"
    assert not [m for m in by_module if m.startswith("graftlens.methods.core")]
