# Two commands: `make run` starts the whole product, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install browser run test test-all bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed; installing python3-venv with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the dashboard's browser tests (tests/test_dashboard.py); no browser download.
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "warning: could not install Debian chromium; the dashboard browser tests will be skipped"

run: install
	$(VENV)/bin/apiinone run

test: install browser
	$(VENV)/bin/pytest -q

# The slow soak/chaos variants as well.
test-all: install browser
	$(VENV)/bin/pytest -q -m ''

bench: install
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) var .pytest_cache
