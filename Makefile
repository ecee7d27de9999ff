# Mailsync developer entry points. `make run` and `make test` work on a fresh machine:
# they create the virtualenv (Python 3.12, same as the Lambda runtime) themselves.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export SAM_CLI_TELEMETRY := 0
REGION ?= eu-west-1

# pyenv's python3.12 shim only answers when told the version; fall back to its install dir.
PYTHON312 ?= $(shell \
	if python3.12 -c 'import sys' >/dev/null 2>&1; then command -v python3.12; \
	else ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12 2>/dev/null | tail -1; fi)

# USER is also the login name in the environment; only a USER= given to make counts here.
TOKEN_USER := $(if $(filter command line,$(origin USER)),$(USER),alice)
TENANT ?= acme
ROLE ?= user

.DEFAULT_GOAL := run
.PHONY: help bench run demo token invoke test unit integration e2e tooling lint fmt validate build openapi dovecot venv clean web chromium

help:  ## this list
	@grep -E '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## (.*)/\1\t\2/' | \
		awk -F'\t' '{ printf "  make %-12s %s\n", $$1, $$2 }'

run: $(STAMP) web  ## the local stack: moto + API on :3000 + scheduler + worker
	$(BIN)/python -m devstack.run

demo: $(STAMP) dovecot web  ## the local stack plus a throwaway Dovecot with a sample mailbox
	$(BIN)/python -m devstack.demo

token: $(STAMP)  ## print a local JWT: make token USER=alice TENANT=acme ROLE=admin
	@$(BIN)/python -m devstack.token --user "$(TOKEN_USER)" --tenant "$(TENANT)" --role "$(ROLE)"

invoke: $(STAMP)  ## run a function in-process against the running stack: make invoke FN=SyncWorkerFunction EVENT=events/sync_worker.json
	@if [ -z "$(EVENT)" ]; then echo 'usage: make invoke [FN=<function>] EVENT="events/<file>.json ..."'; exit 2; fi
	@$(BIN)/python -m devstack.invoke $(if $(FN),--function "$(FN)") $(EVENT)

# Two pytest processes: the suite waits on mail servers and moto as much as it computes. A test file
# stays on one process (--dist loadfile), so module-scoped stacks and servers start once.
PYTEST_WORKERS ?= 2

test: $(STAMP) dovecot servers web chromium lint validate build  ## everything CI runs
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile  # pyproject.toml's testpaths: tests/ and devstack/tests/

unit: $(STAMP)  ## the fast loop: pure logic and the services on an in-memory data layer (about 40 s)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP) dovecot servers  ## handlers + moto + real Dovecot, Cyrus and Courier
	$(BIN)/python -m pytest tests/integration

e2e: $(STAMP) dovecot web chromium  ## the local stack over HTTP
	$(BIN)/python -m pytest tests/e2e

# A test run keeps its screenshots in pytest's temporary folder; the README's are refreshed on purpose.
.PHONY: screens
screens: $(STAMP) dovecot web chromium  ## take the README's screenshots again into docs/screens (the browser tests)
	MAILSYNC_UPDATE_SCREENS=1 $(BIN)/python -m pytest tests/e2e/test_web_app.py

tooling: $(STAMP) dovecot  ## tests of the tooling itself: the local stack (devstack/) and the test harness
	$(BIN)/python -m pytest devstack/tests tests/fixtures/tests

.PHONY: soak
soak: $(STAMP) dovecot  ## long runs: convergence (10 seeds x 300 operations per flavour), every crash point on both flavours; not in CI
	MAILSYNC_SOAK=1 $(BIN)/python -m pytest tests/integration/test_convergence_mbsync.py tests/integration/test_convergence.py \
		tests/integration/test_crash_every_write.py tests/integration/test_sync_robustness.py::test_noop_sync_cost_does_not_grow_with_the_mailbox

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check .

fmt: $(STAMP)  ## ruff --fix and ruff format
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

validate: $(STAMP)  ## sam validate --lint
	$(BIN)/sam validate --lint --region $(REGION)

build: $(STAMP)  ## sam build
	$(BIN)/sam build --region $(REGION)

openapi: $(STAMP)  ## export the API's OpenAPI document to docs/openapi.json
	$(BIN)/python -m devstack.openapi docs/openapi.json

# Each package is checked on its own: dovecot-imapd alone (no pop3d) used to pass a binary check.
# isync is mbsync, the second mail client of the convergence tests.
MAIL_PACKAGES := dovecot-imapd dovecot-pop3d isync

dovecot:  ## install whichever of Debian's dovecot-imapd/pop3d and isync is missing (tests start their own servers)
	@missing=$$(for p in $(MAIL_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The reference web app (web/): npm ci from its lockfile, then vite build into web/dist; again only when
# a source changed. The local stack serves web/dist at /app/.
WEB_SOURCES := $(wildcard web/src/*) web/index.html web/package.json web/package-lock.json web/vite.config.ts web/tsconfig.json

web: web/dist/index.html  ## build the web app (web/) into web/dist: npm ci + vite build

web/dist/index.html: $(WEB_SOURCES)
	cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

# The browser tests drive Debian's Chromium (tests/e2e/test_web_app.py); no browser is downloaded.
chromium:  ## install Debian's chromium if missing (the browser of the web app's tests)
	@dpkg-query -W -f='$${Status}' chromium 2>/dev/null | grep -q 'install ok installed' || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

venv: $(STAMP)

$(STAMP): requirements-dev.txt layers/shared/requirements.txt
	@if [ -z "$(PYTHON312)" ]; then echo "Python 3.12 not found (install it, or pass PYTHON312=/path/to/python3.12)"; exit 1; fi
	@[ -x $(BIN)/python3.12 ] || $(PYTHON312) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $@

clean:
	rm -rf .aws-sam .pytest_cache .ruff_cache

bench: $(STAMP) dovecot  ## benchmark scripts under bench/ (BENCH_ARGS=--small for a quick run)
	@if ! command -v mbsync >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq isync; \
	fi
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

.PHONY: servers
servers:  ## unpack Debian's Cyrus IMAP and Courier-IMAP into a cache (they conflict with dovecot-imapd)
	@bash devstack/install_servers.sh
