# kyc-sync — developer entry points. `make demo` and `make test` are all a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JARS := tools/kafka/lib/.fetched
REGISTRY := tools/registry/dist/.fetched
PEER_VENV := .local/bench/peer-venv
PEER_STAMP := $(PEER_VENV)/.installed
## pytest-xdist workers of `make test`: each starts its own broker (and, for the tests that need
## them, the Snowflake double and the registry) the first time one of its tests asks.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(TEST_WORKERS) --durations=20

.PHONY: demo test lint unit integration bench bench-quick bench-peer-env bench-scale \
	bench-scaleout bench-scaleout-snowflake bench-latency chaos chaos-snowflake soak env jars registry clean

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

## Apicurio Registry (Schema Registry, Confluent-compatible API) for the wire-format tests.
registry: $(REGISTRY)
$(REGISTRY): tools/registry/pom.xml
	rm -rf tools/registry/dist
	mvn -q -B -f tools/registry/pom.xml dependency:unpack
	touch $(REGISTRY)

## The main job end to end: local broker, the seed's sample events, DuckDB, the table printed.
demo: env jars
	$(BIN)/python -m tools.demo

lint: env
	$(BIN)/ruff check .
	$(BIN)/mypy

## Everything: lint, unit, property and integration tests (the suite starts its own broker).
test: env jars registry lint
	$(BIN)/pytest $(PYTEST_PARALLEL)

unit: env
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not integration"

integration: env jars registry
	$(BIN)/pytest $(PYTEST_PARALLEL) -m integration

## Throughput benchmark, not part of `make test` (bench/README.md): 5M events over 1M profiles
## on a local broker, plain Avro and the Confluent wire format (a local Schema Registry); prints
## the table and writes bench/results/latest.json.
bench: env jars registry bench-peer-env
	$(BIN)/python -m bench.run

## The stages below are outside CI too; each adds its keys to bench/results/latest.json.
## ARGS passes flags, e.g. `make bench-scale ARGS="--divide 10"` for a smaller run.
## How cost grows: 1M/100k, 5M/1M and 20M/4M events/profiles end to end, memory per profile,
## and the plot bench/results/scale.png.
bench-scale: env jars
	$(BIN)/python -m bench.scale $(ARGS)

## 1, 2 and 3 instances of one group over 6 partitions, one DuckDB file (5M events).
bench-scaleout: env jars
	$(BIN)/python -m bench.scale_out $(ARGS)

## The same on the Snowflake test double (fakesnow's server with Snowflake's table locks), smaller.
bench-scaleout-snowflake: env jars
	$(BIN)/python -m bench.scale_out --warehouse snowflake --events 300000 --profiles 60000 \
		--window-events 100000 $(ARGS)

## Event produced -> row visible in kyc_profile_current at 20k events/s, 5 s windows.
bench-latency: env jars
	$(BIN)/python -m bench.latency $(ARGS)

## The benchmark's smoke size (20k events), peer included when bench-peer-env was made.
bench-quick: env jars registry
	$(BIN)/python -m bench.run --quick

## The peer (Quix Streams) in its own virtualenv: it pins older confluent-kafka and pydantic.
bench-peer-env: $(PEER_STAMP)
$(PEER_STAMP): bench/peer-requirements.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q -r bench/peer-requirements.txt
	touch $(PEER_STAMP)

## The chaos test alone (tests/chaos; the suite runs it with 100k events): 200k events, 3 consumers
## in one group SIGKILLed >= 20 times,
## a broker restart, injected warehouse faults, profile history on; its own broker in .local/chaos;
## ends with one line `chaos: warehouse=duckdb events=... lost=0 stale=0 diff=0 history_diff=0`,
## exit status non-zero unless clean.
chaos: env jars
	$(BIN)/python -m tests.chaos --dir .local/chaos

## The Snowflake variant (also in the suite): 6k events, 2 consumers SIGKILLed, a writer killed
## mid-transaction, injected faults, through the real connector to the Snowflake test double
## (fakesnow with Snowflake's locks); ends with `chaos: warehouse=snowflake events=... diff=0`.
chaos-snowflake: env jars
	$(BIN)/python -m tests.chaos --warehouse snowflake --dir .local/chaos-snowflake

## The same, larger, outside CI: 1M events over 100k profiles.
soak: env jars
	$(BIN)/python -m tests.chaos --dir .local/soak --events 1000000 --profiles 100000

clean:
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache .hypothesis
