# MagScope-Bluesky: `make demo` runs a demo experiment on the simulated microscope,
# `make test` runs the whole test suite. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: screenshots demo test test-serial checks test-fast numba-cache soak lint typecheck layers venv bench clean xvfb

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
checks: $(STAMP) xvfb
	$(MAKE) --no-print-directory -j 2 lint typecheck layers numba-cache

# Debian's Xvfb and the libraries of Qt's xcb platform, for the viewer's test in a real X
# window (tests/test_viewer_xcb.py): installed when absent and we are root with apt-get;
# otherwise the command is printed (and that test fails saying it)
XVFB_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-randr0 \
	libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-image0 libxcb-render-util0
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
xvfb:
	@if command -v Xvfb >/dev/null && ldconfig -p | grep -q libxcb-icccm.so.4; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's Xvfb and Qt's xcb libraries (apt-get)"; \
		$(APT_INSTALL) $(XVFB_PACKAGES) >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && $(APT_INSTALL) $(XVFB_PACKAGES) >/dev/null 2>&1; } || \
		echo "apt-get could not install Xvfb: run as root: apt-get install -y $(XVFB_PACKAGES)"; \
	else echo "Xvfb is missing: run as root: apt-get install -y $(XVFB_PACKAGES)"; fi

# then the tests that hold a real-time rate (marked `alone`), in one process with nothing
# beside them; both parts always run, and the target fails if either failed
test: checks
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --no-loadscope-reorder --durations=25 -m "not soak and not alone" $(PYTEST_ARGS); \
	parallel=$$?; \
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider --durations=5 -m "alone" $(PYTEST_ARGS) || exit 1; \
	exit $$parallel

# one process, in collection order (slower: ~17 min): to read a failure without xdist
test-serial: checks
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

# the fast tier: mock devices, message lists, in-process Tiled, pure computation (< 1 min)
test-fast: numba-cache
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider -m "not system and not slow and not soak" --durations=10 $(PYTEST_ARGS)

# the long tests kept out of `make test` (minutes each): run them on purpose
soak: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider -m soak --durations=0 $(PYTEST_ARGS)

# the screenshots of docs/viewer.md, rendered by Qt's xcb platform in Debian's Xvfb
XVFB_RUN := xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb
screenshots: $(STAMP) xvfb
	$(XVFB_RUN) $(BIN)/python docs/images/viewer_screenshot.py --zlut --seconds 13
	$(XVFB_RUN) MAGSCOPE_SCREENSHOT_DIR=docs/images $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_viewer_panels_live.py tests/test_viewer_run_stream.py \
		tests/test_viewer_run_browser.py::test_a_past_run_opens_from_tiled_in_the_same_panels

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build src/*.egg-info
