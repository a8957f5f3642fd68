"""The scale benchmark runs end to end (--quick) and writes a complete report.

This checks the report's structure, never its numbers: speed is the benchmark's business.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.scale.report import MEASURES
from bench.scale.settings import LAB_PREFIX, MODES, QUICK_SIZES, THROUGHPUT_SIZE
from nfqproxy_lab import netns
from nfqproxy_lab.topology import all_labs
from tests.kernel.conftest import run_benchmark

pytestmark = pytest.mark.kernel
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_quick_scale_benchmark_reports_every_measure_for_every_mode_and_size(
    tmp_path: Path,
) -> None:
    out = run_benchmark("bench", tmp_path, "--quick", timeout=300)
    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == list(QUICK_SIZES)
    every_size = {str(s) for s in QUICK_SIZES}
    # nftables mode is optional: it runs only where nft and the kernel take its layout.
    assert set(MODES) - {"nftables"} <= set(results["modes"]) <= set(MODES)
    for key in MEASURES:
        for mode in results["modes"]:
            sizes = set(results["summary"][key][mode])
            expected = {str(THROUGHPUT_SIZE)} if key in ("tcp_gbits", "udp_kpps") else every_size
            assert sizes == expected, (key, mode, sizes)
    assert {row["measure"] for row in results["targets"]} and all(
        isinstance(row["met"], bool) for row in results["targets"]
    )
    report = (out / "report.md").read_text()
    assert "## Targets (issue 5)" in report
    for title, how in MEASURES.values():
        assert f"## {title}" in report and f"How: {how}." in report
    for plot in ("latency", "programming", "throughput"):
        assert (out / f"{plot}.png").read_bytes()[:8] == PNG
    assert not [n for n in netns.names() if n.startswith(LAB_PREFIX)]
    assert not [name for name in all_labs() if name.startswith(LAB_PREFIX)]
