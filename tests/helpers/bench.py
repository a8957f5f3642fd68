"""Running a benchmark module as its smoke tests do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import ROOT


def run_benchmark(module: str, out: Path, *args: str, timeout: float = 600) -> Path:
    """Runs `python -m module --out out *args` from the repository; returns the one
    results folder it wrote. Fails with the benchmark's output if it fails."""
    run = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (results,) = out.iterdir()
    return results
