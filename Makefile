# Two commands do all the set-up on a fresh machine:  make demo  |  make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= out/demo
PYTEST_ARGS ?=

.PHONY: demo test lint bench system-deps clean help

help:
	@echo "make demo   - set up .venv if needed, then run the end-to-end demo (outputs in $(DEMO_OUT))"
	@echo "make test   - set up .venv if needed, then run the test suite"
	@echo "make lint   - ruff format --check + ruff check"
	@echo "make bench  - run the benchmarks (JSON on stdout)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# the CPU build of torch first: a bare 'torch' requirement would pull a multi-GB CUDA build
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[test]"
	@touch $(STAMP)

# Optional system packages (ffmpeg: extra containers and codecs; espeak-ng: demo voices). Best effort: without
# apt or root, or offline, the features that need them report themselves unavailable.
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing with apt-get"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: could not install$$missing; dependent features are unavailable"; \
	  else echo "note:$$missing not installed and apt-get unavailable; dependent features are unavailable"; fi; \
	fi

demo: $(STAMP) system-deps
	$(PY) -m pipelines demo --out $(DEMO_OUT)

# pytest exit code 5 (no tests collected) is a failure, not a pass
test: $(STAMP) system-deps
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "# $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf out .pytest_cache .ruff_cache
