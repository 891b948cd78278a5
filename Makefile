# OpenCarrier: `make run` sets up and runs the platform with a demo; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint setup browser clean-var

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) manage.py runplatform

# Browser tests drive Debian's Chromium; install it when missing and we may (root, apt available).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
		{ echo "chromium is needed for the browser tests: install Debian's chromium package"; exit 1; }

test: $(STAMP) browser
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) -m pytest

bench: $(STAMP)
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) -m tests.bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .
