# Loom Exchange. `make run` starts the exchange, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench dashboards clean

# setup.py and the C source: the compiled replay loop is built by the install.
$(STAMP): pyproject.toml setup.py engine/_replay.c scripts/setup-venv.sh
	PY=$(PY) VENV=$(VENV) scripts/setup-venv.sh
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/loom run --demo

test: $(STAMP)
	scripts/install-tools.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/loom bench engine --mode deep --ops 1000000
	$(BIN)/loom bench engine --mode bounded --ops 1000000

dashboards: $(STAMP)
	$(BIN)/loom dashboards build

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
