"""Docs that cannot rot: every Python block of README.md and docs/ runs, the site builds
strictly, and the API reference documents every public name once.

The blocks of one page run in order in one namespace, as a reader would paste them. A block
preceded by ``<!-- docs-test: skip (reason) -->`` is not run; the reason must say what it needs
(a GPU, the hub, files of the reader's own), and :data:`SKIPPED` lists every such block, so a
new one is a decision, not an accident.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(r"(?P<skip><!-- docs-test: skip \((?P<reason>[^)]*)\) -->\n)?```python\n(?P<code>.*?)```", re.S)
# Every block that is not run, by page and reason.
SKIPPED = {
    ("docs/getting-started.md", "needs the hub, a GPU and files of your own"),
    ("docs/getting-started.md", "needs a model too large for one device"),
}


def blocks(page: Path) -> list[tuple[str | None, str]]:
    return [(m["reason"], m["code"]) for m in BLOCK.finditer(page.read_text())]


def test_the_skipped_blocks_are_the_listed_ones() -> None:
    found = {(str(p.relative_to(ROOT)), reason) for p in PAGES for reason, _ in blocks(p) if reason}
    assert found == SKIPPED


@pytest.mark.embedded
@pytest.mark.parametrize(
    "page", [p for p in PAGES if any(r is None for r, _ in blocks(p))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_python_block_runs(page: Path, graftlens_cache, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace: dict = {"__name__": f"docs:{page.name}"}
    for i, (reason, code) in enumerate(blocks(page)):
        if reason is None:
            exec(compile(code, f"{page.relative_to(ROOT)} (block {i + 1})", "exec"), namespace)


def test_the_docs_build_strictly(tmp_path) -> None:
    """``mkdocs build --strict``: no broken link, no unresolved API reference, no warning."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs, "mkdocs is not installed: pip install -e '.[docs]'"
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()
    recipes = (tmp_path / "site" / "reference" / "recipes" / "index.html").read_text()
    assert "kind: knockout" in recipes and "only_correct" in recipes  # generated from the models
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "graftlens run" in cli and "--restart" in cli  # generated from the typer app
    _assert_renders(tmp_path / "site" / "reference" / "api" / "index.html", _names_with_arguments())
    wide = {
        str(page.relative_to(tmp_path / "site")): lines
        for page in (tmp_path / "site").rglob("*.html")
        if (lines := [line for line in _code_lines(page.read_text()) if len(line) > 88])
    }
    assert wide == {}, "code lines wider than 88 characters in the built site"


ERRORS = {"GraftlensError", "ModelLoadError", "RecipeError", "DataError", "InterventionError", "StoreError"}


def _facade() -> dict[str, object]:
    """The public names of ``graftlens`` a researcher calls (the errors and ``__version__`` aside)."""
    import graftlens

    return {n: getattr(graftlens, n) for n in graftlens.__all__ if not n.startswith("__") and n not in ERRORS}


def _arguments(obj: object) -> list[str]:
    """What a caller passes: the parameters of a function, or of a class's constructor."""
    import inspect

    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    try:
        parameters = inspect.signature(obj).parameters.values()
    except ValueError:  # a builtin's subclass made by graftlens, not by the caller (ActivationCache, a dict)
        return []
    return [p.name for p in parameters if p.kind not in kinds]


def _names_with_arguments() -> list[str]:
    return [name for name, obj in _facade().items() if _arguments(obj)]


def _documented_arguments(obj: object) -> list[str]:
    """The names of the docstring's Args (or, for a settings class, Attributes) table, as
    mkdocstrings parses it (griffe, Google style)."""
    import inspect
    import logging

    import griffe

    logging.getLogger("griffe").setLevel(logging.ERROR)
    sections = griffe.Docstring(inspect.getdoc(obj) or "").parse("google")
    tables = [s for s in sections if s.kind.value in ("parameters", "attributes")]
    return [p.name for s in tables for p in s.value]


def test_every_argument_of_every_facade_name_is_in_its_parameter_table() -> None:
    """Each public function's (each class's constructor's) arguments, in its docstring's table:
    none missing, none that the signature does not have."""
    wrong = {}
    for name, obj in _facade().items():
        arguments, documented = _arguments(obj), _documented_arguments(obj)
        if set(arguments) != set(documented):
            wrong[name] = {"missing": sorted(set(arguments) - set(documented)), "extra": sorted(set(documented) - set(arguments))}
    assert wrong == {}


def test_the_argument_check_sees_a_missing_and_an_extra_argument() -> None:
    def documented(x: int, y: int) -> None:
        """Do.

        Args:
            x: one.
            z: not an argument.
        """

    assert _arguments(documented) == ["x", "y"] and _documented_arguments(documented) == ["x", "z"]


def _assert_renders(page: Path, tabled: list[str] = ()) -> None:
    """The API page reads as a page: no reST role shows literally (mkdocstrings reads Google
    docstrings, where ``:class:`X``` is text), every ``>>>`` example is a code block, not prose,
    and each name of ``tabled`` has a parameter table under its heading."""
    html = page.read_text()
    roles = sorted(set(re.findall(r":(?:class|func|meth|mod|attr|data|exc|obj):`[^`<]*`?", html)))
    assert not roles, f"reST roles shown literally: {roles[:5]}"
    prose = [p[:120] for p in re.findall(r"<p>(.*?)</p>", html, re.S) if "&gt;&gt;&gt;" in p]
    # ``>>>`` outside an Examples section is read as Markdown's quote marker, three deep
    prose += [q[:120] for q in re.findall(r"<blockquote>\s*<blockquote>(.*?)</blockquote>", html, re.S)]
    assert not prose, f"examples rendered as prose: {prose[:3]}"
    wide = [line for line in _code_lines(html) if len(line) > 88]
    assert not wide, f"code lines wider than 88 characters: {wide[:3]}"
    entries = dict(re.findall(r'<h3 id="graftlens\.([\w.]+)"(.*?)(?=<h3 id=|\Z)', html, re.S))
    untabled = [n for n in tabled if not re.search(r'doc-section-title">(Parameters|Attributes):', entries.get(n, ""))]
    assert not untabled, f"entries without a parameter table: {untabled}"


def _code_lines(html: str) -> list[str]:
    """The text lines of a built page's code blocks (``<pre>``), markup removed."""
    import html as html_module

    blocks = re.findall(r"<pre[^>]*>(.*?)</pre>", html, re.S)
    return [line for block in blocks for line in html_module.unescape(re.sub(r"<[^>]+>", "", block)).splitlines()]


def test_the_rendering_check_sees_a_literal_role_a_prose_example_and_a_missing_table(tmp_path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<p>See :class:`~graftlens.Graft`.</p>")
    with pytest.raises(AssertionError, match="roles shown literally"):
        _assert_renders(page)
    page.write_text("<p>Example (x):\n    &gt;&gt;&gt; import graftlens</p>")
    with pytest.raises(AssertionError, match="examples rendered as prose"):
        _assert_renders(page)
    page.write_text("<blockquote>\n<blockquote>\n<blockquote>\n<p>import graftlens</p></blockquote></blockquote></blockquote>")
    with pytest.raises(AssertionError, match="examples rendered as prose"):
        _assert_renders(page)
    page.write_text(f'<div class="highlight"><pre><span></span><code>x = 1  # {"y" * 90}</code></pre></div>')
    with pytest.raises(AssertionError, match="wider than 88"):
        _assert_renders(page)
    table = '<span class="doc-section-title">Parameters:</span>'
    page.write_text(f'<h3 id="graftlens.a">a</h3>{table}<h3 id="graftlens.b">b</h3><p>none</p>')
    _assert_renders(page, ["a"])
    with pytest.raises(AssertionError, match=r"without a parameter table: \['b'\]"):
        _assert_renders(page, ["a", "b"])


def test_the_api_reference_documents_each_public_name_once() -> None:
    import graftlens

    text = (ROOT / "docs" / "reference" / "api.md").read_text()
    documented = [n for n in re.findall(r"^::: graftlens\.(\w+)$", text, re.M) if n != "errors"]  # the five errors: below
    errors = {"GraftlensError", "ModelLoadError", "RecipeError", "DataError", "InterventionError", "StoreError"}
    assert sorted(documented) == sorted(set(documented)), "a name is documented twice"
    assert set(documented) | errors | {"__version__"} == set(graftlens.__all__)


def test_no_page_speaks_of_earlier_versions() -> None:
    """README and docs describe graftlens as it is; history goes in CHANGELOG.md."""
    history = re.compile(
        r"this stop|previous stop|earlier stop|before this|earlier variant|used to compute|"
        r", was [0-9.]+ ?s\b|was [0-9.]+ ?s\b|before and [0-9.]+ ?s now",
        re.I,
    )
    found = [(str(p.relative_to(ROOT)), m.group(0)) for p in PAGES for m in history.finditer(p.read_text())]
    assert found == []


def _public_homes() -> list[str]:
    """The modules the public names of ``graftlens`` live in (their docstrings carry the examples)."""
    import graftlens

    return sorted({*graftlens._EXPORTS, "graftlens.models.tiny"})


def test_every_public_entry_point_has_an_example() -> None:
    import inspect

    import graftlens

    errors = {"GraftlensError", "ModelLoadError", "RecipeError", "DataError", "InterventionError", "StoreError"}
    names = [n for n in graftlens.__all__ if not n.startswith("__") and n not in errors]
    without = [n for n in names if ">>>" not in (inspect.getdoc(getattr(graftlens, n)) or "")]
    assert without == [], f"public names whose docstring has no runnable example: {without}"


@pytest.mark.parametrize("module", _public_homes())
def test_the_docstring_examples_run(module: str, graftlens_cache) -> None:
    """The ``>>>`` examples of the public entry points' docstrings run as written (on tiny models,
    or on the embedded model where the example says so)."""
    import doctest
    import importlib

    results = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0 and results.failed == 0, results


def test_the_readme_opens_with_a_short_example_from_strings_that_prints() -> None:
    """The README's first Python block is what a newcomer pastes: at most 12 lines of at most 88
    characters, from strings (no tensors built by hand), printing its result. It runs in
    ``test_every_python_block_runs``."""
    first = next(code for reason, code in blocks(ROOT / "README.md") if reason is None)
    lines = first.rstrip("\n").splitlines()
    assert len(lines) <= 12 and max(len(line) for line in lines) <= 88, first
    assert "graftlens.prompts(" in first and "print(" in first and "torch.tensor" not in first


FENCE = re.compile(r"^```[^\n]*\n(?P<code>.*?)^```", re.S | re.M)


def _wide_code_lines(text: str, width: int = 88) -> list[str]:
    """The lines of ``text``'s fenced code blocks wider than ``width`` characters."""
    return [line for m in FENCE.finditer(text) for line in m["code"].splitlines() if len(line) > width]


def test_no_code_line_in_the_docs_is_wider_than_88_characters() -> None:
    """A wider line scrolls in the site's code boxes, hiding its end (often the comment)."""
    wide = {str(p.relative_to(ROOT)): lines for p in PAGES if (lines := _wide_code_lines(p.read_text()))}
    assert wide == {}


def test_the_width_check_sees_a_wide_line() -> None:
    text = "text " * 30 + "\n```python\nshort = 1\n" + "x = 1  # " + "y" * 80 + "\n```\n"
    assert _wide_code_lines(text) == ["x = 1  # " + "y" * 80]


def test_the_recipe_reference_gives_every_field_its_meaning() -> None:
    """Every field of every recipe part on the reference page has a meaning (its docstring)."""
    import importlib.util

    from graftlens.experiments.recipe import Recipe
    from graftlens.methods import sweep_types

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    models = [Recipe, *(model for _, model in hooks.recipe_sections()), *sweep_types()]
    empty = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items() if name != "kind" and not f.description]
    assert empty == []
    page = hooks.recipe_reference()
    assert all(f"| `{name}` |" in page for m in models for name in m.model_fields if name != "kind")
