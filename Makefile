# `make dev` runs the whole assistant on embedded services; `make test` runs the full suite.
# Both bootstrap what they need: a .venv with the project installed, and for tests the
# Debian packages they use, installed with apt-get when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the tests use (checked by command), installed with apt-get when missing.
DEBIAN_TEST_PACKAGES := docker-compose:docker-compose dovecot:dovecot-imapd openssl:openssl git:git chromium:chromium

MARKED_VERSION ?= 18.2.1
DOMPURIFY_VERSION ?= 3.4.18

.PHONY: dev test lint bench bench-approvals clean debian-deps vendor-web screenshots

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

# The README's picture of the web UI, taken by the browser tests.
screenshots: $(STAMP) debian-deps
	UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_web_ui.py -k query_and_an_email

bench: $(STAMP)
	$(BIN)/python bench/turn_latency.py
	$(BIN)/python bench/approvals.py

bench-approvals: $(STAMP)
	$(BIN)/python bench/approvals.py

clean:
	rm -rf $(VENV) .assistant .mypy_cache .ruff_cache

# The web UI's two libraries, vendored as published on the npm registry (versions in
# api/static/vendor/VERSIONS); run this to update them, then commit the files.
vendor-web:
	@set -e; tmp=$$(mktemp -d); cd $$tmp; \
	npm pack --silent marked@$(MARKED_VERSION) dompurify@$(DOMPURIFY_VERSION) >/dev/null; \
	for f in *.tgz; do mkdir $${f%.tgz}; tar xzf $$f -C $${f%.tgz}; done; \
	cd $(CURDIR)/api/static/vendor; \
	cp $$tmp/marked-*/package/lib/marked.umd.js marked.umd.js; \
	cp $$tmp/marked-*/package/LICENSE LICENSE.marked; \
	cp $$tmp/dompurify-*/package/dist/purify.min.js purify.min.js; \
	cp $$tmp/dompurify-*/package/LICENSE LICENSE.dompurify; \
	printf 'marked %s\ndompurify %s\n' $(MARKED_VERSION) $(DOMPURIFY_VERSION) > VERSIONS; \
	rm -rf $$tmp; echo "vendored marked $(MARKED_VERSION), dompurify $(DOMPURIFY_VERSION)"
