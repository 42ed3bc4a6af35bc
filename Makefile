# Amelia: common tasks. `make test` installs what is missing, then runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COMPOSE ?= docker compose

.PHONY: install test test-fast lint format typecheck migrate serve db-up db-down bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install Amelia with its dev tools

test: $(STAMP)  ## Run the whole test suite against real PostgreSQL
	$(BIN)/pytest -q

test-fast: $(STAMP)  ## Everything except the slow process/race tests
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)  ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check amelia alembic tests bench
	$(BIN)/ruff format --check amelia alembic tests bench
	$(BIN)/mypy amelia

format: $(STAMP)
	$(BIN)/ruff check --fix amelia alembic tests bench
	$(BIN)/ruff format amelia alembic tests bench

typecheck: $(STAMP)
	$(BIN)/mypy amelia

migrate: $(STAMP)  ## Upgrade the configured (or embedded) database to head
	$(BIN)/amelia db upgrade

serve: $(STAMP)  ## Run the server (embedded PostgreSQL unless AMELIA_DATABASE_URL is set)
	$(BIN)/amelia serve

db-up:  ## Start PostgreSQL 16 in Docker (docker compose) and wait until it is healthy
	$(COMPOSE) up -d --wait postgres

db-down:
	$(COMPOSE) down

bench: $(STAMP)  ## Benchmarks; writes bench/results/latest.json and bench/RESULTS.md
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
