# `make dev` runs the whole assistant on embedded services; `make test` runs the full suite.
# Both bootstrap what they need: a .venv with the project installed, and for tests the
# Debian packages they use, installed with apt-get when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the tests use (checked by command), installed with apt-get when missing.
DEBIAN_TEST_PACKAGES := docker-compose:docker-compose dovecot:dovecot-imapd openssl:openssl git:git

.PHONY: dev test lint bench bench-approvals clean debian-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/assistant dev

debian-deps:
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=""; for pair in $(DEBIAN_TEST_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

test: $(STAMP) lint debian-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

bench: $(STAMP)
	$(BIN)/python bench/turn_latency.py
	$(BIN)/python bench/approvals.py

bench-approvals: $(STAMP)
	$(BIN)/python bench/approvals.py

clean:
	rm -rf $(VENV) .assistant .mypy_cache .ruff_cache
