"""Running a benchmark module as its tests do: what it plans (--plan), a run, and a report
rendered again from results (--report-from). Tests do not import bench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def benchmark_plan(module: str, *args: str) -> dict[str, Any]:
    """What `python -m module --plan *args` says these options would run."""
    run = subprocess.run(
        [sys.executable, "-m", module, "--plan", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    plan: dict[str, Any] = json.loads(run.stdout)
    return plan


def rerender_report(module: str, results: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Writes results to folder/results.json and renders its report and plots there again
    (`python -m module --report-from`); returns results.json as the benchmark rewrote it."""
    path = folder / "results.json"
    path.write_text(json.dumps(results))
    run = subprocess.run(
        [sys.executable, "-m", module, "--report-from", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    derived: dict[str, Any] = json.loads(path.read_text())
    return derived
