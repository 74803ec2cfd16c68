.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MSCALE := $(BIN)/mscale

.PHONY: help install demo demo-data features test test-all bench clean

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install mscale with its dev extras

demo-data: $(STAMP) ## write the synthetic demo market into data/ (offline)
	$(MSCALE) demo-data

demo: $(STAMP) ## the main job, offline: demo market -> features -> train --compare -> backtest -> report
	$(MSCALE) demo

features: $(STAMP) ## build or refresh the warehouse views, derived cache and checks
	$(MSCALE) features

test: $(STAMP) ## run the test suite (offline; long checks excluded)
	$(BIN)/pytest -q -n 2

test-all: $(STAMP) ## run every test, including the slow ones
	$(BIN)/pytest -q -n 2 -m ''

bench: $(STAMP) ## run the benchmarks (ingest, backtest, training, make demo, feature build; ~10 min, scratch in bench-work/)
	$(MSCALE) bench all

clean: ## remove the virtualenv, caches and the warehouse file (keeps data/)
	rm -rf $(VENV) .pytest_cache .hypothesis warehouse/*.duckdb warehouse/*.duckdb.wal
