"""The tutorials in docs/tutorials run top to bottom and print what the site shows.

Each notebook is executed in a fresh kernel (``tools/notebooks.py``, as ``make notebooks`` does)
and its outputs compared with the stored ones, cell by cell: the same kinds of output, the same
text, and numbers equal within a rounding step, so a tutorial whose stored numbers no longer
follow from its code fails here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "docs" / "tutorials").glob("*.ipynb"))
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _tool():
    spec = importlib.util.spec_from_file_location("notebooks_tool", ROOT / "tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outputs(notebook) -> list[list[tuple[str, str]]]:
    """Per code cell, its outputs as ``(kind, text)``: the printed text, or the kinds of a display."""
    cells = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        shown = []
        for out in cell.outputs:
            if out.output_type == "stream":
                shown.append((f"stream:{out.name}", out.text))
            elif out.output_type == "error":
                shown.append(("error", f"{out.ename}: {out.evalue}"))
            else:
                shown.append((out.output_type, " ".join(sorted(out.get("data", {})))))
        cells.append(shown)
    return cells


def _same_text(stored: str, fresh: str, tolerance: float = 0.011) -> bool:
    """Equal but for numbers, which may differ by a rounding step (0.001 printed as 0.002, 34%
    as 35%): relative ``tolerance`` or one unit of the last printed digit."""
    if NUMBER.split(stored) != NUMBER.split(fresh):
        return False
    for a, b in zip(NUMBER.findall(stored), NUMBER.findall(fresh), strict=True):
        step = 10.0 ** -len(a.split(".")[1]) if "." in a else 1.0
        if abs(float(a) - float(b)) > max(step * 1.01, tolerance * abs(float(a))):
            return False
    return True


def _differences(stored, fresh) -> list[str]:
    found = []
    stored_cells, fresh_cells = _outputs(stored), _outputs(fresh)
    if len(stored_cells) != len(fresh_cells):
        return [f"{len(stored_cells)} code cells stored, {len(fresh_cells)} run"]
    for i, (was, now) in enumerate(zip(stored_cells, fresh_cells)):
        if [kind for kind, _ in was] != [kind for kind, _ in now]:
            found.append(f"cell {i + 1}: outputs {[k for k, _ in was]} stored, {[k for k, _ in now]} now")
        else:
            found += [f"cell {i + 1}: {a!r} stored, {b!r} now" for (_, a), (_, b) in zip(was, now) if not _same_text(a, b)]
    return found


def test_there_is_a_tutorial_and_it_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    assert NOTEBOOKS and all(f"tutorials/{p.name}" in nav for p in NOTEBOOKS)


def test_the_stored_notebooks_hold_outputs_and_no_error_and_fit_the_page() -> None:
    """Outputs stored, none an error or stderr noise; code lines of at most 76 characters, the
    width of a notebook cell's code column in the site (the ``In [n]:`` prompt takes the rest)."""
    import nbformat

    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        cells = _outputs(notebook)
        assert all(cells), f"{path.name}: a code cell without output (run make notebooks)"
        assert not [o for cell in cells for o in cell if o[0] in ("error", "stream:stderr")], path.name
        code = [line for cell in notebook.cells if cell.cell_type == "code" for line in cell.source.splitlines()]
        assert [line for line in code if len(line) > 76] == [], path.name


@pytest.mark.embedded
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_tutorial_runs_and_prints_what_is_stored(path: Path, graftlens_cache) -> None:
    import nbformat

    fresh = _tool().execute(path)
    assert _differences(nbformat.read(path, as_version=4), fresh) == []


def test_the_comparison_sees_a_changed_number_a_changed_word_and_a_missing_output() -> None:
    import nbformat

    assert _same_text("p = 0.725 (-34%)", "p = 0.726 (-35%)")
    assert not _same_text("p = 0.725", "p = 0.735")
    assert not _same_text("top ' L'", "top ' K'")
    assert not _same_text("layers 15-19: -34%", "layers 15-19: -40%")
    stored = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    stored.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    fresh = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    assert _differences(stored, stored) == []
    assert _differences(stored, fresh) == ["cell 1: outputs ['stream:stdout'] stored, [] now"]
