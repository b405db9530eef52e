# LLM Observatory — developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := $(wildcard src tests bench deploy sdk/python/src)

.DEFAULT_GOAL := help

.PHONY: help run demo test test-setup lint format typecheck bench bench-peer clean stack-up stack-down

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(wildcard sdk/python/pyproject.toml)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,dev]'
	@if [ -f sdk/python/pyproject.toml ]; then $(BIN)/pip install --disable-pip-version-check -q -e sdk/python; fi
	@touch $(STAMP)

venv: $(STAMP) ## create the virtual environment and install the project

run: $(STAMP) ## serve the API, OTLP endpoint and UI on the embedded SQLite default
	$(BIN)/observatory serve

demo: $(STAMP) ## send a realistic stream of demo traces to a running server
	$(BIN)/observatory demo

test-setup: $(STAMP) ## install test tools and check PostgreSQL and Redis are reachable
	bash scripts/test-setup.sh

test: test-setup ## run every test (unit, integration, deploy, e2e)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

format: $(STAMP) ## apply ruff formatting and autofixes
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

typecheck: $(STAMP) ## mypy (strict) over the server package and the SDK
	$(BIN)/mypy
	cd sdk/python && ../../$(BIN)/mypy

bench: test-setup ## run the benchmarks and print a results table (writes bench/results/*.json)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-peer: test-setup ## install Phoenix 20.26.1 (bench/.venv-phoenix) and compare its ingest with ours
	@test -f bench/.venv-phoenix/.installed-20.26.1 || { \
		$(PYTHON) -m venv bench/.venv-phoenix && \
		bench/.venv-phoenix/bin/pip install --disable-pip-version-check -q 'arize-phoenix[pg]==20.26.1' && \
		touch bench/.venv-phoenix/.installed-20.26.1; }
	$(BIN)/python -m bench --peer $(BENCH_ARGS)

stack-up: $(STAMP) ## start the production stack on loopback (deploy/local; STACK_DIR=... to move it)
	$(BIN)/python -m deploy.local up $(if $(STACK_DIR),--dir $(STACK_DIR))

stack-down: ## stop the loopback production stack and remove its state
	$(BIN)/python -m deploy.local down $(if $(STACK_DIR),--dir $(STACK_DIR))

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
