"""Execute the tutorials (``docs/tutorials/*.ipynb``) and store what they print.

``python tools/notebooks.py`` (``make notebooks``) runs each notebook top to bottom in a fresh
kernel and writes it back with its outputs: what the cells print and the figures they draw.
What goes to stderr (progress bars of the libraries underneath) is left out, and so is the
execution metadata, so a rerun that prints the same leaves the file unchanged. The test suite
runs the same `execute` and compares its outputs with the stored ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"


def execute(path: Path, timeout: int = 1200) -> nbformat.NotebookNode:
    """The notebook at ``path`` executed in a fresh kernel (its folder as working directory),
    with stderr streams and execution metadata removed."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    return notebook


def main(paths: list[str]) -> None:
    for path in [Path(p) for p in paths] or sorted(TUTORIALS.glob("*.ipynb")):
        print(f"executing {path.name}", flush=True)
        nbformat.write(execute(path), path)


if __name__ == "__main__":
    main(sys.argv[1:])
