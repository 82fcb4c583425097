# Two commands matter: `make demo` and `make test`. `make install` is the idempotent setup both use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NUMBA_CACHE_DIR ?= $(CURDIR)/.venv/numba-cache
export NUMBA_CACHE_DIR

.PHONY: install system bytecode demo test test-fast lint lint-imports bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch + torchvision first, as the matched pair pyroved needs; then the project in editable mode.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) system bytecode

# The package's bytecode, compiled here: an editable install leaves it to the first import,
# and where PYTHONDONTWRITEBYTECODE is set (as on this project's machines) no process ever
# writes it, so every `rewardscope` process would compile ~30,000 lines again (~0.4 s of a
# cold `analyze`). compileall skips what is up to date; run again after editing the sources.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q service clients simulators benchmarks

# System tools the tests use: promtool and prometheus (tests/test_deploy.py, tests/test_alerts.py
# skip without them, and never install anything). Debian's `prometheus` package ships both; it is
# installed when they are missing and we are root with apt-get. A failure is only a warning.
APT_ENV := DEBIAN_FRONTEND=noninteractive
system:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's prometheus package (promtool, prometheus) for the tests"; \
		$(APT_ENV) apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
		|| { $(APT_ENV) apt-get update -q >/dev/null 2>&1 \
		     && $(APT_ENV) apt-get install -y -q --no-install-recommends prometheus \
		        >/dev/null 2>&1; } \
		|| echo "warning: could not install prometheus; promtool/prometheus tests will skip" >&2; \
	else \
		echo "note: promtool/prometheus not found (install Debian's 'prometheus' package as" \
		     "root); the tests that need them will skip" >&2; \
	fi

# The main job on the digital twin: the service (workflow all) suggests regions, a controller
# follows them; one line per frame, then demo-out/overlay.png (last frame with suggestions,
# regions boxed), demo-out/discovery.png and demo-out/experiment.json.
demo: install
	$(BIN)/rewardscope demo --twin --frames 24 --out demo-out

# The import-layer contracts (pyproject [tool.importlinter]) first: seconds, and a broken layer
# is a design error worth seeing before the suite runs.
test: install lint-imports
	$(BIN)/python -m pytest -q

# The unit tests alone: everything but the tests marked slow (the daemon end to end over
# sockets and subprocesses, the soak). About a minute; no wall-clock bounds, so a busy
# 2-core machine gives the same answers.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint-imports: install
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports --no-cache

lint: install
	$(BIN)/ruff check .

# The benchmark suite: every comparison side by side in one run, written to
# benchmarks/results/<date>.md and .json. `make bench BENCH_ARGS=--quick`: a few minutes.
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m benchmarks suite -- $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
