# The two set-up commands: `make run` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
BENCHSTAMP := $(VENV)/.installed-bench
# The dashboard (ui/, served at /ui/): built by npm into the package, rebuilt only when its
# sources change; the built files ship in the wheel, so running needs no Node.js.
UI_DIST  := src/cumulo/gateway/ui_dist
UISTAMP  := $(UI_DIST)/.built
UI_SRC   := $(shell find ui/src -type f 2>/dev/null) $(wildcard ui/*.json ui/*.ts ui/index.html)

.PHONY: run test lint typecheck pytest bench clean sandbox ui

# The worker sandbox uses bubblewrap when it is installed; without root or apt this is a
# no-op and `cumulo up` runs with process isolation (and says so).
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null 2>&1; } || \
	    echo "note: could not install bubblewrap; functions run without the sandbox"; \
	  else echo "note: bubblewrap (bwrap) is not installed; functions run without the sandbox"; fi; }

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[ai]'
	touch $@

$(DEVSTAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[dev]'
	touch $@ $(STAMP)

$(BENCHSTAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[dev,bench]'
	touch $@ $(STAMP) $(DEVSTAMP)

ui: $(UISTAMP)

$(UISTAMP): $(UI_SRC)
	@if command -v npm >/dev/null 2>&1; then \
	  (cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build) && touch $@; \
	else echo "note: npm is not installed, so the dashboard (/ui/) is not built: install Node.js >= 20.19 with npm"; fi

run: $(STAMP) $(UISTAMP) sandbox
	$(VENV)/bin/cumulo up --demo

test: $(DEVSTAMP) sandbox lint typecheck pytest

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(DEVSTAMP)
	$(VENV)/bin/mypy

pytest: $(DEVSTAMP) $(UISTAMP)
	$(VENV)/bin/pytest --durations=15 $(PYTEST_ARGS)
	@# The integration tests again, every platform on PostgreSQL (tests/conftest.py).
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "integration tests on PostgreSQL:"; \
	  CUMULO_TEST_STORE=postgresql $(VENV)/bin/pytest -m integration --durations=10 $(PYTEST_ARGS); \
	else echo "note: PostgreSQL is not installed (apt-get install postgresql): the integration tests ran on SQLite only"; fi

bench: $(BENCHSTAMP) sandbox
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1; }; } || \
	  echo "note: wrk is not installed; the throughput benchmarks will be skipped"; }
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .cumulo .mypy_cache .ruff_cache .pytest_cache
