"""The layout's rules, checked on the source: what may import what, and how long a file
may grow (docs/architecture.md explains the layout). Test modules share code through
tests/helpers only: a test module that imports another, or a conftest, runs that module's
import-time code and ties the two together; conftest.py files keep fixtures and hooks."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

MAX_LINES = 600


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth (lazy imports included); relative
    imports as their leading dots."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offending(folder: str, forbidden: str) -> dict[str, list[str]]:
    found = {}
    for path in python_files(folder):
        bad = sorted(
            m
            for m in imported_modules(path)
            if m.split(".")[0] == forbidden or m == forbidden or m.startswith(forbidden + ".")
        )
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_the_runtime_package_never_imports_the_lab() -> None:
    assert offending("src/nfqproxy", "nfqproxy_lab") == {}


def test_the_image_is_built_without_the_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("nfqproxy_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    setup_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_py)  # not as __main__: setup() itself does not run
    assert {"nfqproxy", "nfqproxy_lab"} <= set(setup_py.packages())
    monkeypatch.setenv("NFQPROXY_RUNTIME_ONLY", "1")
    runtime = setup_py.packages()
    assert "nfqproxy.datapath.fast" in runtime
    assert [name for name in runtime if name.startswith("nfqproxy_lab")] == []
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "NFQPROXY_RUNTIME_ONLY=1 pip wheel" in dockerfile


DATAPATH = ROOT / "src" / "nfqproxy" / "datapath"
# Every implementation is a subpackage of datapath/; the modules beside them are the contract.
IMPLEMENTATIONS = sorted(p.parent.name for p in DATAPATH.glob("*/__init__.py"))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_data_path_implementations_import_the_contract_not_each_other(
    implementation: str,
) -> None:
    assert len(IMPLEMENTATIONS) >= 2, IMPLEMENTATIONS
    for sibling in IMPLEMENTATIONS:
        if sibling != implementation:
            where = f"src/nfqproxy/datapath/{implementation}"
            assert offending(where, f"nfqproxy.datapath.{sibling}") == {}


SHARED_COMPILED = ("compiled.py", "workers.py")


def test_the_contract_imports_no_implementation() -> None:
    contract = [p for p in DATAPATH.glob("*.py") if p.name != "factory.py"]
    implementations = tuple(f"nfqproxy.datapath.{name}" for name in IMPLEMENTATIONS)
    for path in contract:
        bad = [
            m
            for m in imported_modules(path)
            if m.startswith((*implementations, "nfqproxy._"))
            and path.name != "maglev.py"  # uses the compiled table builder when built
            # The compiled core and its queue workers, shared by the compiled paths.
            and not (path.name in SHARED_COMPILED and m.startswith("nfqproxy._fastpath"))
        ]
        assert bad == [], path


def test_no_source_file_is_over_600_lines() -> None:
    long = {}
    for folder in ("src", "cext", "bench"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".pyx", ".pxd", ".pxi", ".c", ".h"} and path.is_file():
                if path.suffix == ".c" and path.with_suffix(".pyx").exists():
                    continue  # Cython's generated output, not a source
                lines = len(path.read_text(errors="replace").splitlines())
                if lines > MAX_LINES:
                    long[str(path.relative_to(ROOT))] = lines
    assert long == {}


def test_bench_and_tests_do_not_import_each_other() -> None:
    assert offending("bench", "tests") == {}
    assert offending("tests", "bench") == {}


def shares_through_a_test_module(module: str) -> bool:
    """A relative import, or one of a test module or a conftest in tests."""
    last = module.rsplit(".", 1)[-1]
    return module.startswith(".") or (
        module.startswith("tests.") and (last.startswith("test_") or last == "conftest")
    )


def test_no_test_file_imports_a_test_module_or_a_conftest() -> None:
    offences = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        for module in sorted(filter(shares_through_a_test_module, imported_modules(path))):
            offences.append(f"{where} imports {module}")
    assert offences == [], "share it through tests/helpers instead:\n" + "\n".join(offences)
