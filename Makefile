# gmcert: `make help` lists the targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
.DEFAULT_GOAL := help

.PHONY: help install run test test-full bench reproduce lint clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/gmcert-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $@

install: $(BIN)/gmcert-run ## create .venv and install gmcert with its test extras

run: install ## the main job on the embedded default (digits); extra overrides via ARGS="..."
	$(BIN)/gmcert-run $(ARGS)

test: install ## the fast test suite (GPU tests skip without CUDA)
	$(BIN)/python -m pytest -m "not slow" -q

test-full: install ## every test, slow ones included
	$(BIN)/python -m pytest -q

bench: install ## benchmarks; figures go to outputs/bench/*.json
	@mkdir -p outputs/bench
	@for script in scripts/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

reproduce: install ## every experiment whose data is present, then one combined report
	$(BIN)/python scripts/reproduce.py $(ARGS)

lint: install ## ruff
	$(BIN)/ruff check gmcert tests scripts

clean: ## remove run outputs (keeps the feature cache)
	find outputs -mindepth 1 -maxdepth 1 ! -name cache ! -name .gitkeep -exec rm -rf {} +
