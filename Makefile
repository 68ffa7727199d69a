# The two commands a newcomer runs (see README):  make run   and   make test
# Both create ./.venv, install torch 2.13.0 (the CPU wheel; it must come before anything
# that depends on torch, or pip pulls a multi-GB CUDA build) and then jaxdistill with
# every extra. Re-running skips the install when pyproject.toml has not changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers for make test (each loads JAX and torch: ~1-2 GB of memory)
TEST_WORKERS ?= 2

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,sevennet,fennol,orb]'
	touch $(STAMP)

run: setup
	$(BIN)/jaxdistill distill configs/quickstart.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check jaxdistill tests

clean:
	rm -rf $(VENV) .pytest_cache
