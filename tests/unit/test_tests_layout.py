"""The tests' own layout: test modules share code through tests/helpers only. A test
module that imports another, or a conftest, runs that module's import-time code and
ties the two together; conftest.py files keep fixtures and hooks."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.paths import ROOT

# Imports from a conftest that other work still has (its owner moves them to
# tests.helpers.bench): tolerated, not required.
TOLERATED = {
    ("tests/kernel/test_bench_smoke.py", "tests.kernel.conftest"),
    ("tests/kernel/test_scale_bench_smoke.py", "tests.kernel.conftest"),
}


def imported_modules(path: Path) -> set[str]:
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
            if (where, module) not in TOLERATED:
                offences.append(f"{where} imports {module}")
    assert offences == [], "share it through tests/helpers instead:\n" + "\n".join(offences)
