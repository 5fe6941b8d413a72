# MagScope-Bluesky: `make demo` runs a demo experiment on the simulated microscope,
# `make test` runs the whole test suite. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: demo test test-serial checks test-fast numba-cache soak lint typecheck layers venv bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/magscope demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

# numba's on-disk cache filled once, not by every test process at the same time
numba-cache: $(STAMP)
	$(BIN)/python tests/warm_numba_cache.py

# the checks and the numba cache side by side, then the suite on two pytest-xdist workers:
# a module's tests stay on one worker (module fixtures are built once), the modules that
# use fixed addresses share one worker, the longest groups start first (tests/conftest.py)
checks: $(STAMP)
	$(MAKE) --no-print-directory -j 2 lint typecheck layers numba-cache

test: checks
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

# one process, in collection order (slower: ~17 min): to read a failure without xdist
test-serial: checks
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

# the fast tier: mock devices, message lists, in-process Tiled, pure computation (< 1 min)
test-fast: numba-cache
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider -m "not system and not slow and not soak" --durations=10 $(PYTEST_ARGS)

# the long tests kept out of `make test` (minutes each): run them on purpose
soak: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider -m soak --durations=0 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build src/*.egg-info
