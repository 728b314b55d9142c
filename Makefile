# ShoeSeg: two commands for a newcomer, `make up` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
LS_VENV := .ls-venv
LS_VERSION := 1.23.2
PIP := bash scripts/pip.sh
BIN := $(VENV)/bin

.PHONY: help install ls-env system-deps lint test test-fast up bench clean

help:
	@echo "make up      install what is needed and run Redis, Label Studio, the backend and a worker"
	@echo "make test    install everything the tests need, lint, and run every test"
	@echo "make bench   run the benchmarks in bench/ (prints tables)"

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) $(BIN)/pip -e '.[dev,onnx]'
	touch $@

install: $(VENV)/.installed

# Label Studio pins old redis/rq and Django: it lives in its own environment, cached here.
$(LS_VENV)/.installed:
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(PIP) $(LS_VENV)/bin/pip label-studio==$(LS_VERSION)
	touch $@

ls-env: $(LS_VENV)/.installed

# Debian packages the tests use: a real redis-server and headless Chromium for the browser test.
system-deps:
	@bash scripts/system-deps.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --cache-dir .cache/import-linter

test: install ls-env system-deps lint
	SHOESEG_LS_VENV=$(abspath $(LS_VENV)) $(BIN)/pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest -m "not e2e and not slow" $(PYTEST_ARGS)

# VIA=file IMAGES=folder import a dataset; PORT=8080 is Label Studio's port. Ctrl-C stops everything.
up:
	@PYTHON=$(PYTHON) bash scripts/up-deps.sh
	@$(MAKE) --no-print-directory install ls-env
	SHOESEG_LS_VENV=$(abspath $(LS_VENV)) $(BIN)/shoeseg up $(if $(VIA),--via $(VIA)) $(if $(IMAGES),--images $(IMAGES)) $(if $(PORT),--port $(PORT))

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache .ruff_cache .hypothesis
