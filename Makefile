# Beyond Scale: Efficient AI from Scratch — every set-up step is a target here.
# `make course` and `make test` work on a fresh clone: they create .venv when it is missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
export PYTHONHASHSEED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help venv course test test-fast lint unit notebooks pairing lab bench sync constraints clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*## /\t/'

# Install the pinned CPU torch first: an unpinned torch requirement can pull a multi-GB
# CUDA build. Then the package with its dev extras, at the versions CI uses.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" >/dev/null
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install everything (idempotent)

course: $(STAMP)  ## execute every notebook (copies in build/executed) and print their times
	$(PY) scripts/execute_notebooks.py $(NOTEBOOKS)

test: $(STAMP) lint unit notebooks  ## everything CI runs

test-fast: $(STAMP) lint unit  ## lint + unit tests, no notebooks, no browser

lint: $(STAMP)  ## ruff over library, tests, notebooks (.py), scripts
	$(VENV)/bin/ruff check course_lib tests notebooks scripts benchmarks
	$(VENV)/bin/ruff format --check course_lib tests scripts benchmarks notebooks

unit: $(STAMP)  ## unit tests, the pairing check, property tests
	$(PY) -m pytest -q -m "not browser" --ignore=tests/browser

notebooks: $(STAMP)  ## every notebook executed under nbval (asserts are the claim checks)
	$(PY) -m pytest -q --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider $(NOTEBOOKS)

sync: $(STAMP)  ## re-pair notebooks after editing the .py sources
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]_*.py

lab: $(STAMP)  ## JupyterLab on notebooks/
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)  ## run every benchmark -> benchmarks/results.json and results.md
	$(PY) -m benchmarks.run

constraints: $(STAMP)  ## rewrite constraints.txt from the current venv
	{ echo "# Exact versions CI installs (pip install -c constraints.txt). Regenerate with: make constraints"; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > constraints.txt

clean:  ## remove build outputs (not .venv)
	rm -rf build book/_build .pytest_cache
