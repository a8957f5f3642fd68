"""The scale benchmark runs end to end (--quick) and writes a complete report.

This checks the report's structure, never its numbers: speed is the benchmark's business.
What a complete report holds (sizes, modes, measures, the names of the labs it must take
down) is what the benchmark's --plan says a quick run covers: tests do not import bench.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nfqproxy_lab import netns
from nfqproxy_lab.topology import all_labs
from tests.helpers.bench import run_benchmark
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.kernel
PNG = b"\x89PNG\r\n\x1a\n"


def quick_plan() -> dict[str, Any]:
    """What `python -m bench --quick` covers, as the benchmark itself says."""
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--plan"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    plan: dict[str, Any] = json.loads(run.stdout)
    return plan


def test_the_quick_scale_benchmark_reports_every_measure_for_every_mode_and_size(
    tmp_path: Path,
) -> None:
    plan = quick_plan()
    out = run_benchmark("bench", tmp_path, "--quick", timeout=300)
    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == plan["sizes"]
    # Optional modes (nftables) run only where nft and the kernel take their layout.
    assert (
        set(plan["modes"]) - set(plan["optional_modes"])
        <= set(results["modes"])
        <= set(plan["modes"])
    )
    assert results["measures"] == plan["measures"]
    for key in plan["measures"]:
        for mode in results["modes"]:
            expected = {n for n, modes in plan["modes_by_size"].items() if mode in modes}
            if key in ("tcp_gbits", "udp_kpps"):  # taken at one N only
                expected &= {str(plan["throughput_size"])}
            sizes = set(results["summary"][key][mode])
            assert sizes == expected, (key, mode, sizes)
    assert {row["measure"] for row in results["targets"]} and all(
        isinstance(row["met"], bool) for row in results["targets"]
    )
    report = (out / "report.md").read_text()
    assert "## Targets (issue 5)" in report
    for measure in plan["measures"].values():
        assert f"## {measure['title']}" in report and f"How: {measure['how']}." in report
    for plot in ("latency", "programming", "throughput"):
        assert (out / f"{plot}.png").read_bytes()[:8] == PNG
    assert not [n for n in netns.names() if n.startswith(plan["lab_prefix"])]
    assert not [name for name in all_labs() if name.startswith(plan["lab_prefix"])]
