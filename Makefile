# The two commands of the README:
#   make up    - install, then run the whole pipeline on the embedded default (no Kafka,
#                no Redis, no API key), ingress included, on http://127.0.0.1:8080
#   make test  - install everything the tests need (Python packages, redis-server, the
#                Kafka jars), then ruff, mypy, import rules and the whole test suite against
#                a real Kafka 4.x broker and a real Redis that the tests start and stop.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PKGS := cli schemas topics handlers agents ingress

.PHONY: up test setup system-deps kafka-jars lint typecheck pytest bench clean

# The package is installed in setuptools' strict editable mode (ADR 1): a tree of links to
# the source files, which mypy and import-linter can read. A link tree does not see new
# modules, so the install is redone whenever the set of modules changes (the .modules
# stamp below), as well as when pyproject.toml changes.
MODULES_STAMP := $(VENV)/.agentstream-modules

$(MODULES_STAMP): FORCE
	@mkdir -p $(VENV)
	@find $(PKGS) -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort > $@.new
	@cmp -s $@.new $@ || mv $@.new $@
	@rm -f $@.new

$(BIN)/agentstream: pyproject.toml $(MODULES_STAMP)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	@touch $(BIN)/agentstream

setup: $(BIN)/agentstream

.PHONY: FORCE
FORCE:

up: setup
	$(BIN)/agentstream up

system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@command -v java >/dev/null || { echo "java (17+) is required for the local Kafka broker"; exit 1; }
	@command -v mvn >/dev/null || { echo "maven is required to fetch the Kafka jars"; exit 1; }

kafka-jars:
	@bash infra/kafka/fetch.sh >/dev/null

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

pytest: setup system-deps kafka-jars
	$(BIN)/pytest $(PYTEST_ARGS)

test: setup system-deps kafka-jars lint typecheck pytest

# The peers of bench/peers.py (FastStream, faust-streaming), pinned in the `bench` extra.
BENCH_STAMP := $(VENV)/.agentstream-bench

$(BENCH_STAMP): pyproject.toml $(BIN)/agentstream
	@$(BIN)/python -m pip install -q -e '.[dev,bench]' --config-settings editable_mode=strict
	@touch $@

bench: setup system-deps kafka-jars $(BENCH_STAMP)
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/ingress.py
	$(BIN)/python bench/peers.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
