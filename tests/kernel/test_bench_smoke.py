"""The data-path benchmark runs end to end (--quick) and writes a complete report.

This checks the report's structure, never its numbers: speed is the benchmark's business.
The competitors to look for are the ones results.json lists samples for (every one the
benchmark has, measured or not): tests do not import bench.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfqproxy_lab import netns
from tests.helpers.bench import run_benchmark

pytestmark = pytest.mark.kernel


def test_the_quick_benchmark_writes_json_markdown_and_a_plot_for_every_competitor(
    tmp_path: Path,
) -> None:
    out = run_benchmark("bench.datapath", tmp_path, "--quick")
    results = json.loads((out / "results.json").read_text())
    modes = list(results["samples"])
    assert modes and set(results["summary"]) == set(modes)
    for mode in modes:
        assert set(results["summary"][mode]) == {"tcp1", "tcp4", "udp_pps", "udp_loss"}, mode
    assert (
        results["bytes_per_flow"]["fast"] > 0
        and results["maglev_build_ms"]["compiled"]["median"] > 0
    )
    report = (out / "report.md").read_text()
    assert all(f"| {mode} |" in report for mode in modes)
    assert (out / "datapath.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in netns.names() if n.startswith("bench")]
