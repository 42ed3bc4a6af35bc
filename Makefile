# Amelia: common tasks. `make test` installs what is missing, then runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COMPOSE ?= docker compose
# The dashboard tests drive Debian's chromium (a Playwright browser download fails here).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test test-reliability test-fast lint format typecheck migrate serve db-up db-down bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
	  echo "no $(CHROMIUM) and no apt-get: install chromium, or the browser tests skip"; \
	fi

install: $(STAMP) $(CHROMIUM)  ## Create .venv, install Amelia with its dev tools, and chromium

test: $(STAMP) $(CHROMIUM)  ## Run the whole test suite against real PostgreSQL
	$(BIN)/pytest -q

test-reliability: $(STAMP)  ## Fault suite (restarts, kills, network faults, bad input); ~6 min
	$(BIN)/pytest -q tests/reliability

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
