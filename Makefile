# The two set-up commands of the README: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed.stamp

.PHONY: install demo test lint clean-lab

install: $(STAMP)

# Re-run the install whenever the package definition or the extension sources change.
$(STAMP): pyproject.toml setup.py scripts/install-system-deps.sh $(wildcard cext/*.pyx cext/*.pxd cext/includes/*.pxd)
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/nfqproxy demo

test: lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Removes any lab or rules that a killed run left behind.
clean-lab: install
	$(BIN)/nfqproxy lab down --all
	$(BIN)/nfqproxy cleanup
