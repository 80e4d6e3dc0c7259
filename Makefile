# Loom Exchange. `make run` starts the exchange, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` needs the runtime dependencies only (a minute with warm caches);
# `make test` adds the test extra, whose FIX client (quickfix) compiles from source for minutes.
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
INSTALL_DEPS := pyproject.toml constraints.txt scripts/setup-venv.sh

.PHONY: run test lint format bench dashboards clean

$(STAMP): $(INSTALL_DEPS)
	PY=$(PY) VENV=$(VENV) scripts/setup-venv.sh
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	@echo "installing the test extra (quickfix, the FIX tests' client, may compile from source: minutes)"
	PY=$(PY) VENV=$(VENV) EXTRAS=test scripts/setup-venv.sh
	touch $(TEST_STAMP)

run: $(STAMP)
	$(BIN)/loom run --demo

test: $(TEST_STAMP)
	scripts/install-tools.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict engine/core
	$(BIN)/python scripts/mypy_ratchet.py
	$(BIN)/python -m pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict engine/core
	$(BIN)/python scripts/mypy_ratchet.py

format: $(TEST_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/loom bench engine --mode deep --ops 1000000
	$(BIN)/loom bench engine --mode bounded --ops 1000000

dashboards: $(TEST_STAMP)
	$(BIN)/loom dashboards build

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
