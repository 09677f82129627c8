# sensorhub: `make help` lists the targets. Two commands are enough: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SENSORHUB := $(BIN)/sensorhub
# `make install` sets up everything the tests need as well; `make install DEV=0` only what sensorhub needs to run
# (a production machine): requirements.lock, without pytest, Playwright or mypy, and node_modules without ESLint.
# Both Python locks are hashed (pip-compile).
DEV ?= 1
LOCK := $(if $(filter 0,$(DEV)),requirements.lock,requirements-dev.lock)
PY_STAMP := $(VENV)/.installed-$(basename $(LOCK))
JS_STAMP := node_modules/.installed
DB_FILE := db/db.sqlite3
# Python keeps its bytecode caches (__pycache__/, git-ignored) whatever the shell says: with PYTHONDONTWRITEBYTECODE
# set (some images set it), each of the ~450 Python processes of `make test` compiled sensorhub's modules again, and
# each test worker pytest's rewritten test modules.
unexport PYTHONDONTWRITEBYTECODE

.DEFAULT_GOAL := help
.PHONY: help install clean db data broker client prod debug run test lint simulate bench screenshots translations

help: ## List the targets
	@echo "sensorhub: make <target>"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The message catalogs (src/sensorhub/translations/<lang>/LC_MESSAGES/<domain>.po: the web server's `messages`, the
# command line's `cli`), each compiled next to itself by `make install` (the .mo files are not committed).
PO_FILES := $(wildcard src/sensorhub/translations/*/LC_MESSAGES/*.po)
MO_FILES := $(PO_FILES:.po=.mo)

install: $(PY_STAMP) $(JS_STAMP) $(MO_FILES) ## Set up .venv/ (Python packages), node_modules/ (browser libraries), catalogs

$(PY_STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "sensorhub needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@# An editable install leaves sensorhub's own modules uncompiled (pip compiles the others): compiled once here,
	@# not by the first of the many processes a test run starts at once.
	$(BIN)/python -m compileall -q -j 0 src bench
	@rm -f $(VENV)/.installed*
	@touch $@

$(JS_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js 18 or newer (sudo apt-get install nodejs npm)"; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 18 ? 1 : 0)' || \
	  { echo "sensorhub needs Node.js 18 or newer to install its browser libraries; node is $$(node --version)"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error $(if $(filter 0,$(DEV)),--omit=dev)
	$(BIN)/python -m sensorhub.web.vendor
	@touch $@

%.mo: %.po | $(PY_STAMP)
	$(BIN)/pybabel compile --statistics -i $< -o $@

# The web server's strings: extracted from its code and templates (babel.cfg), merged into each language's catalog;
# translate what is new (an empty msgstr, or `#, fuzzy`), then `make install` compiles (docs/development.md).
translations: $(PY_STAMP) ## Extract the web server's strings and update their catalogs (then translate them)
	@mkdir -p var
	$(BIN)/pybabel extract -F babel.cfg -k N_ --no-location --sort-output --project=sensorhub \
	  --copyright-holder="sensorhub's authors" -o var/messages.pot src/sensorhub/web
	$(BIN)/pybabel update -i var/messages.pot -d src/sensorhub/translations -D messages -w 120 \
	  --ignore-pot-creation-date

clean: ## Remove the SQLite database, keeping a copy in db/backups/ first (accounts and readings included)
	@if [ -f $(DB_FILE) ]; then \
	  mkdir -p db/backups && copy=db/backups/db-$$(date -u +%Y%m%dT%H%M%SZ).sqlite3 && \
	  python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))' \
	    $(DB_FILE) $$copy && chmod 600 $$copy && \
	  rm -f $(DB_FILE) $(DB_FILE)-wal $(DB_FILE)-shm && \
	  echo "database removed; a copy is kept in $$copy (restore: cp $$copy $(DB_FILE))"; \
	else echo "no database at $(DB_FILE): nothing to remove"; fi

db: $(PY_STAMP) ## Create the SQLite database (idempotent)
	$(SENSORHUB) db init

data: db ## Insert dummy devices and readings
	$(SENSORHUB) db seed

broker: $(PY_STAMP) ## Run the Mosquitto broker with mqtt/mosquitto.conf
	$(SENSORHUB) broker

client: db ## Run the ingest client (MQTT -> database, LED pipe -> MQTT)
	$(SENSORHUB) client

prod: db install ## Run the web server with gunicorn on all addresses, port 8000
	$(SENSORHUB) web

debug: db install ## Run Flask's debug web server on localhost:5000
	$(SENSORHUB) web --debug

run: install ## Run everything (broker, client, web) with DEMO=3 virtual devices; Ctrl-C stops all
	$(SENSORHUB) run --demo $${DEMO:-3}

simulate: $(PY_STAMP) ## Run virtual ESP32s (DEVICES=3 INTERVAL=2)
	$(SENSORHUB) simulate --devices $${DEVICES:-3} --interval $${INTERVAL:-2}

lint: $(PY_STAMP) $(JS_STAMP) ## Check style (ruff, ESLint), types (mypy) and which way imports go (lint-imports)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	npx --no-install eslint .

# Tests run in TEST_WORKERS processes (pytest-xdist), a test module per process at a time: many of them wait on real
# services (test_notify's receiver is down for 60 s), so 6 keep a 2-core machine busy (docs/development.md: 3 min
# 32 s to 3 min 54 s, 4 min 07 s the first run in a clone; 5: 3 min 54 s to 4 min 14 s; 4: 4 min 47 s). The
# longest modules start first (tests/conftest.py, LONGEST_FIRST), not xdist's default order by test count.
# TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 6
test: install lint ## Run every test (unit, integration, browser) and a quick benchmark smoke run
	$(BIN)/pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

# One scenario (or a few): `make bench BENCH_ARGS="--scenario alerts"` (`--quick`: small numbers; see docs/performance.md).
bench: install ## Measure throughput, loss and latency (prints a table and a JSON line)
	$(BIN)/python -m bench $(BENCH_ARGS)

screenshots: install ## Regenerate docs/screenshots/*.png (real stack, 3 virtual devices, Chromium)
	$(BIN)/python -m tests.screenshots docs/screenshots
