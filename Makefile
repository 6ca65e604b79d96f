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

.PHONY: venv bytecode demo test test-all lint format docs bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip $(PIP_QUIET)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,docs,profiling]' $(PIP_QUIET)
	@rm -f $(VENV)/.installed-*
	@touch $@

# lm's own bytecode, written even under PYTHONDONTWRITEBYTECODE=1 (as pip does for installed
# packages; an editable install compiles nothing): without it every `python -m lm...` process
# compiles ~100 modules from source, ~0.2 s per start. Only changed files are recompiled.
bytecode: venv
	@$(PY) -m compileall -q src > /dev/null

demo: bytecode
	$(PY) -m lm.main.train_lm --config_path config/gpt2_nano.yaml

# The suite runs on TEST_WORKERS pytest-xdist processes; a file's tests stay on one of them,
# so its module fixtures (a trained run, a token cache) are built once. TEST_WORKERS=0 runs
# it in this process (a debugger, `-x`); `pytest tests/...` alone runs in one process too.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile

test: bytecode
	$(PY) -m pytest $(XDIST)

test-all: bytecode
	$(PY) -m pytest $(XDIST) -m "not gpu"

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
