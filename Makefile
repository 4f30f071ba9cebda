# msa-sandbox: every command a user needs. The Python workspace (.venv) is created on first use from the
# hash-pinned locks in requirements/; nothing else has to be installed by hand.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SRC_DIRS := libs/msa_kit/src discovery/src config-server/src gateway/src services/user/src services/catalog/src services/order/src cli/src faultproxy/src probe/src console/src

.PHONY: help install up down status logs test test-unit bench bench-quick lock contracts clean
.DEFAULT_GOAL := help

help:
	@echo "make up      start the whole topology as local processes and wait until every instance is healthy"
	@echo "make down    stop it; nothing of ours is left running or listening"
	@echo "make status  what runs, and its health"
	@echo "make test    the whole test suite (unit, contract, integration against the real topology)"
	@echo "make bench   every performance figure beside its reference, one table (~8 min; bench/README.md)"
	@echo "make lock    re-pin requirements/*.in into hash-locked requirements/*.lock (main: runtime, the image; dev: + tests)"
	@echo "make contracts  regenerate contracts/ (events' JSON Schemas, AsyncAPI, the consumers' pacts) after a change"
	@echo "make clean-data  remove the local databases (and config snapshots, registry state) under var/"

$(STAMP): requirements/main.lock requirements/dev.lock requirements/bootstrap.lock Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements/bootstrap.lock
	@$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python --require-hashes requirements/dev.lock
	@# Our own packages are source trees on the path (what an editable install would do, without a build step).
	@site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  for d in $(SRC_DIRS); do echo "$(CURDIR)/$$d"; done > "$$site/msa-sandbox.pth"
	@printf '#!/bin/sh\nexec "%s/python" -m msa_cli "$$@"\n' "$(CURDIR)/$(BIN)" > $(BIN)/msa && chmod +x $(BIN)/msa
	@touch $@

install: $(STAMP)

up: $(STAMP)
	@$(BIN)/msa up

down:
	@if [ -x $(BIN)/msa ]; then $(BIN)/msa down; else echo "nothing to stop (no workspace yet)"; fi

status: $(STAMP)
	@$(BIN)/msa status

logs:
	@tail -n 50 var/log/*.log

test: $(STAMP)
	@deploy/test-tools.sh
	@$(BIN)/python -m pytest

test-unit: $(STAMP)
	@$(BIN)/python -m pytest -m "not integration"

# Benchmarks print figures and never fail on time; they fail only when a benchmark crashes or leaves a process.
bench: $(STAMP)
	@bench/tools.sh
	@$(BIN)/python bench/harness.py --command "make bench"

bench-quick: $(STAMP)
	@bench/tools.sh
	@$(BIN)/python bench/harness.py --quick --command "make bench-quick"

lock:
	@test -x $(BIN)/uv || $(MAKE) install
	cd requirements && ../$(BIN)/uv pip compile -q --generate-hashes --python-version 3.11 --no-header --no-annotate main.in -o main.lock
	cd requirements && ../$(BIN)/uv pip compile -q --generate-hashes --python-version 3.11 --no-header --no-annotate -c main.lock dev.in -o dev.lock
	cd requirements && ../$(BIN)/uv pip compile -q --generate-hashes --python-version 3.11 --no-header --no-annotate bootstrap.in -o bootstrap.lock

contracts: $(STAMP)
	@$(BIN)/msa contracts generate
	@# The pacts: the consumer tests write what each consumer expects into contracts/pacts/.
	@MSA_UPDATE_PACTS=1 $(BIN)/python -m pytest -q -p no:cacheprovider services/order/tests/contract/test_order_consumes.py gateway/tests/test_jwks_consumer.py

clean-data: down
	rm -rf var/data var/config var/discovery

clean: down
	rm -rf var $(VENV)
