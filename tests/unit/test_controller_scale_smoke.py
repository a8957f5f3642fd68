"""The controller benchmark runs end to end on a small cluster (structure, not numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import ROOT


def test_the_controller_benchmark_writes_json_markdown_and_a_plot(tmp_path: Path) -> None:
    # Run as users run it: tests do not import bench.
    command = [sys.executable, "-m", "bench.controller_scale", "--services", "200"]
    command += ["--changes", "5", "--out", str(tmp_path)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=120)
    (out,) = tmp_path.iterdir()
    results = json.loads((out / "results.json").read_text())
    assert results["services"] == 200 and len(results["change_ms"]["samples"]) == 5
    assert results["cold_start_seconds"] > 0 and results["rss_mb"] > 0
    assert "| cold start to tables programmed |" in (out / "report.md").read_text()
    assert (out / "controller.png").read_bytes()[:4] == b"\x89PNG"
