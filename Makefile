# kyc-sync — developer entry points. `make demo` and `make test` are all a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JARS := tools/kafka/lib/.fetched

.PHONY: demo test lint unit integration bench bench-quick chaos soak env jars clean

env: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

jars: $(JARS)
$(JARS): tools/kafka/pom.xml
	mvn -q -B -f tools/kafka/pom.xml dependency:copy-dependencies
	touch $(JARS)

## The main job end to end: local broker, the seed's sample events, DuckDB, the table printed.
demo: env jars
	$(BIN)/python -m tools.demo

lint: env
	$(BIN)/ruff check .
	$(BIN)/mypy

## Everything: lint, unit, property and integration tests (the suite starts its own broker).
test: env jars lint
	$(BIN)/pytest

unit: env
	$(BIN)/pytest -m "not integration"

integration: env jars
	$(BIN)/pytest -m integration

clean:
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache .hypothesis
