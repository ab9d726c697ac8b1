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
PKGS := schemas topics handlers agents agentstream ingress

.PHONY: up test setup system-deps kafka-jars lint typecheck pytest bench clean

$(BIN)/agentstream: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(BIN)/agentstream

setup: $(BIN)/agentstream

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

bench: setup system-deps kafka-jars
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/ingress.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
