# Beyond Scale: Efficient AI from Scratch — every set-up step is a target here.
# `make course` and `make test` work on a fresh clone: they create .venv when it is missing.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
NPM_DIR := build/npm
VENDOR_STAMP := book/_vendor/.stamp
HTML := book/_build/html
# The notebook the live-JupyterLab browser test runs top to bottom, then drives its widget
# (chapter 03's attention-mask explorer). That run is its second execution, so the
# determinism check (nbval) skips it: no notebook runs more than twice.
LAB_NOTEBOOK ?= 03_sparse_attention.ipynb
export PYTHONHASHSEED := 0
# OpenMP threads that sleep instead of spinning while they wait: with one busy process
# beside it, a 2-thread matmul loop ran 14x slower with spinning threads (design §7).
# Set before any Python starts torch; a value in the caller's environment wins.
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help venv course execute book test test-fast lint unit determinism browser browser-deps \
        lab bench sync constraints clean doctor stress screenshots

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*## /\t/'

# Install the pinned CPU torch first: an unpinned torch requirement can pull a multi-GB
# CUDA build. Then the package with its dev extras, at the versions CI uses.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" \
	  --env OMP_WAIT_POLICY PASSIVE >/dev/null
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install everything (idempotent)

# JavaScript for the offline site, from the npm packages pinned in book/package-lock.json.
$(VENDOR_STAMP): book/package.json book/package-lock.json scripts/vendor_js.py $(STAMP)
	mkdir -p $(NPM_DIR) && cp book/package.json book/package-lock.json $(NPM_DIR)/
	cd $(NPM_DIR) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	$(PY) scripts/vendor_js.py
	rm -rf $(HTML)  # Sphinx adds static files but never removes one: rebuild with the new set
	touch $@

# `make course` reports a slow notebook and never fails for it; `make test` adds --strict:
# a notebook whose kernel CPU time (not wall time, which load inflates) exceeds twice its
# budget fails as a regression. The variable reaches `execute` through test's prerequisites.
EXECUTE_FLAGS ?=
execute: $(STAMP)  ## execute every notebook (cached) into build/executed; wall s, CPU s, MB, load
	$(PY) scripts/execute_notebooks.py $(EXECUTE_FLAGS)

book: $(STAMP) $(VENDOR_STAMP) execute  ## build the site into book/_build/html, warnings as errors
	$(PY) scripts/article_page.py build/executed book/article_checked.md --strict
	$(VENV)/bin/jupyter-book build book --warningiserror --keep-going --quiet
	$(PY) scripts/site_report.py $(HTML)

course: book  ## THE main command: execute the notebooks and build the book
	@echo "Open $(HTML)/index.html — or run 'make lab' for the live notebooks."

test: EXECUTE_FLAGS = --strict
test: $(STAMP) lint unit course stress determinism browser  ## everything CI runs

doctor: $(STAMP)  ## fingerprint, load, memory, disk, versions, set-up state, expected course time here
	@$(PY) scripts/doctor.py

stress: $(STAMP)  ## the most load-sensitive notebooks with one busy process per core beside them
	$(PY) scripts/stress.py

test-fast: $(STAMP) lint unit  ## lint + unit tests: no notebooks, no browser

lint: $(STAMP)  ## ruff over library, tests, notebooks (.py), scripts, benchmarks
	$(VENV)/bin/ruff check course_lib tests notebooks scripts benchmarks book/_ext conftest.py
	$(VENV)/bin/ruff format --check course_lib tests notebooks scripts benchmarks book/_ext conftest.py

unit: $(STAMP)  ## unit tests, the pairing and book-structure checks, property tests
	$(PY) -m pytest -q -m "not browser" tests

# pyproject's floors, tested: every `pkg>=X` installed as `pkg==X` (torch at TORCH_PIN, first)
# in a fresh build/venv-floors, then the unit tests above on them. Not part of `make test`.
.PHONY: test-floors
test-floors:  ## the lowest versions pyproject allows, in build/venv-floors, under the unit tests
	$(PYTHON) scripts/test_floors.py --torch $(TORCH_PIN)

determinism: $(STAMP)  ## second execution: nbval compares every output with the first run's
	COURSE_BOOK_BUILD=1 $(PY) -m pytest -q -p no:cacheprovider --nbval --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600 \
	  $(filter-out build/executed/$(LAB_NOTEBOOK),$(sort $(wildcard build/executed/[0-9][0-9]_*.ipynb)))

browser-deps:  ## Debian chromium for the browser tests (installs it when running as root)
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need /usr/bin/chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

browser: $(STAMP) browser-deps  ## the built site and a live JupyterLab, driven in chromium
	LAB_NOTEBOOK=$(LAB_NOTEBOOK) $(PY) -m pytest -q -m browser tests/browser

# A look, not only a test (issue #17): every figure of every chapter drawn in chromium at a
# laptop's and a phone's width, with the legibility report beside the PNGs.
SHOTS := build/screenshots/figures
screenshots: $(STAMP) browser-deps execute  ## every figure at 1280 and 390 px -> build/screenshots/figures, with report.txt
	rm -rf $(SHOTS) && mkdir -p $(SHOTS)
	$(PY) scripts/figure_check.py --exit-zero --steps --shots $(SHOTS) --json $(SHOTS)/report.json \
	  $(sort $(wildcard build/executed/[0-9][0-9]_*.ipynb)) | tee $(SHOTS)/report.txt

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
	rm -rf build book/_build book/_vendor .pytest_cache
