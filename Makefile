# Two commands set everything up on a fresh machine:
#   make demo   -- create/refresh .venv, train the embedded default (GPT-2 nano on the Python stdlib)
#   make test   -- create/refresh .venv, run the test suite (what .ci/run calls)
# The virtualenv is rebuilt only when pyproject.toml changes (a stamp named by its hash).

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# This machine's pip config lists extra local indexes; pip warns once per package about the
# ones that are absent. Those lines are noise, everything else pip prints is kept.
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: venv demo test test-all lint format docs bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip $(PIP_QUIET)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,docs,profiling]' $(PIP_QUIET)
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: venv
	$(PY) -m lm.main.train_lm --config_path config/gpt2_nano.yaml

test: venv
	$(PY) -m pytest

test-all: venv
	$(PY) -m pytest -m "not gpu"

lint: venv
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/ruff check src tests bench examples

format: venv
	$(VENV)/bin/ruff format src tests bench examples
	$(VENV)/bin/ruff check --fix src tests bench examples

docs: venv
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site
