# The two set-up commands of the README: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed.stamp

.PHONY: install demo test lint clean-lab asan fuzz bench

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

# The extensions built with AddressSanitizer (-O1 -g), and their tests run against that
# build: a copy of the package in build/asan with the sanitized modules in place. The
# kernel scenarios run the proxy itself (queue loop included) on the sanitized build,
# since ip netns exec passes the environment on.
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)
ASAN_SETTINGS = detect_leaks=0:abort_on_error=1:suppressions=$(CURDIR)/scripts/asan.supp
asan: install
	rm -rf build/asan && mkdir -p build/asan
	cp -r src/nfqproxy build/asan/nfqproxy && rm -f build/asan/nfqproxy/*.so
	NFQPROXY_ASAN_BUILD=1 $(BIN)/python setup.py -q build_ext --build-lib build/asan --build-temp build/asan/tmp
	PYTHONPATH=build/asan NFQPROXY_EXPECT_ASAN=1 LD_PRELOAD=$(ASAN_LIB) \
	  ASAN_OPTIONS=$(ASAN_SETTINGS) \
	  $(BIN)/python -m pytest -p no:cacheprovider tests/unit/test_fast_vs_reference.py \
	  tests/unit/test_maglev.py tests/unit/test_asan_build.py \
	  tests/kernel/test_traffic.py tests/kernel/test_malformed_packets.py
	PYTHONPATH=build/asan LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=$(ASAN_SETTINGS) \
	  $(BIN)/python -m bench.fuzz_datapath --inputs 200000

# One million fuzzed packets through the fast path (about 20 s here; 10M took 195 s).
fuzz: install
	$(BIN)/python -m bench.fuzz_datapath --inputs 1000000

# The data-path benchmark: JSON, Markdown and PNG under results/.
bench: install
	$(BIN)/python -m bench.datapath
