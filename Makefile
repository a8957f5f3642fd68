# The two set-up commands of the README: `make demo` and `make test`. Both are idempotent.
# Also: `make ext` (rebuild the extensions), `make unit`, `make kernel`, `make lint` (no apt,
# no compiler), `make clean`; `make asan`, `make fuzz` and `make bench` for deeper checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed.stamp

.PHONY: install ext demo test unit kernel lint clean clean-lab asan fuzz bench

PY_STAMP := $(VENV)/.python.stamp
EXT_SOURCES := $(shell find cext -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi')

install: $(STAMP)

# The virtualenv and every pip dependency but NetfilterQueue, which is built from C source:
# no compiler and no apt, which is all that lint needs. A venv left half made (python3-venv
# missing, say) is made again.
$(PY_STAMP): pyproject.toml setup.py scripts/python-requirements.py
	test -x $(BIN)/pip || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python scripts/python-requirements.py --extra dev --without NetfilterQueue \
	  | $(BIN)/python -m pip install -q -r /dev/stdin
	NFQPROXY_NO_EXTENSIONS=1 $(BIN)/python -m pip install -q --no-deps -e .
	touch $(PY_STAMP)

# The system packages first (apt, only when one is missing: python3-venv and the compiler
# among them), then the virtualenv and the extensions. Re-run when the package definition
# or any extension source changes.
$(STAMP): pyproject.toml setup.py scripts/install-system-deps.sh $(EXT_SOURCES)
	bash scripts/install-system-deps.sh
	$(MAKE) --no-print-directory $(PY_STAMP)
	NFQPROXY_NO_EXTENSIONS=1 $(BIN)/python -m pip install -q -e '.[dev]'
	$(MAKE) --no-print-directory ext
	touch $(STAMP)

# (Re)builds the extensions in place, beside the package's Python files, whatever
# NFQPROXY_NO_EXTENSIONS says (it also picks the reference path at run time).
ext: $(PY_STAMP)
	NFQPROXY_NO_EXTENSIONS= $(BIN)/python setup.py -q build_ext --inplace

demo: install
	$(BIN)/nfqproxy demo

test: install
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

kernel: install
	$(BIN)/python -m pytest tests/kernel

lint: $(PY_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Build output and the virtualenv; `make clean-lab` removes labs and rules instead.
clean:
	rm -rf $(VENV) build src/*.egg-info .hypothesis .mypy_cache .ruff_cache
	find src -name '*.so' -delete
	rm -f $(patsubst %.pyx,%.c,$(wildcard cext/*.pyx))  # Cython's output only
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +

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
	  $(BIN)/python -m pytest -p no:cacheprovider tests/unit/test_differential.py \
	  tests/unit/test_differential_ipv6.py tests/unit/test_ipv6.py tests/unit/test_sctp.py \
	  tests/unit/test_maglev.py tests/unit/test_asan_build.py \
	  tests/unit/test_datapath_contract.py tests/unit/test_datapath_scenarios.py \
	  tests/unit/test_golden_scenarios.py tests/unit/test_decisions.py tests/unit/test_trace.py \
	  tests/unit/test_control.py \
	  tests/kernel/test_traffic.py tests/kernel/test_malformed_packets.py \
	  tests/kernel/test_ipv6.py tests/kernel/test_sctp.py tests/kernel/test_inspection.py
	PYTHONPATH=build/asan LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=$(ASAN_SETTINGS) \
	  $(BIN)/python -m bench.fuzz_datapath --inputs 200000

# One million fuzzed packets through the fast path (about 20 s here; 10M took 195 s).
fuzz: install
	$(BIN)/python -m bench.fuzz_datapath --inputs 1000000

# The data-path benchmark: JSON, Markdown and PNG under results/.
bench: install
	$(BIN)/python -m bench.datapath
