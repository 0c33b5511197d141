# The two set-up commands: `make run` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
BENCHSTAMP := $(VENV)/.installed-bench

.PHONY: run test lint typecheck pytest bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[dev]'
	touch $@ $(STAMP)

$(BENCHSTAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[dev,bench]'
	touch $@ $(STAMP) $(DEVSTAMP)

run: $(STAMP)
	$(VENV)/bin/cumulo up --demo

test: $(DEVSTAMP) lint typecheck pytest

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

typecheck: $(DEVSTAMP)
	$(VENV)/bin/mypy

pytest: $(DEVSTAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: $(BENCHSTAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .cumulo .mypy_cache .ruff_cache .pytest_cache
