"""The data-path benchmark runs end to end, tiny (one round, 0.3 s measures, four modes),
and writes a complete report.

This checks the report's structure, never its numbers: speed is the benchmark's business.
What the run covers is what the benchmark's --plan says: tests do not import bench. A mode
this machine cannot run (nftables where the kernel refuses kube-proxy's layout, offload
until this nfqproxy has it) must be left out with its reason, not fail the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfqproxy_lab import netns
from tests.helpers.bench import benchmark_plan, run_benchmark

pytestmark = pytest.mark.kernel
MODES = ("kernel", "nftables", "fast", "offload-1q")
TINY = ("--quick", "--seconds", "0.3", "--flows", "20000", "--modes", *MODES)
PACKET_MEASURES = {"tcp1", "tcp4", "udp_pps", "udp_loss", "cps"}


def test_a_tiny_run_reports_every_measure_of_every_mode_it_could_run(tmp_path: Path) -> None:
    plan = benchmark_plan("bench.datapath", *TINY)
    out = run_benchmark("bench.datapath", tmp_path, *TINY, timeout=300)
    results = json.loads((out / "results.json").read_text())
    measured, skipped = results["measured_modes"], results["skipped"]
    assert {"kernel", "fast"} <= set(measured)
    assert set(measured) | set(skipped) == set(MODES) and not set(measured) & set(skipped)
    assert set(plan["unavailable"]) <= set(skipped) and all(skipped.values())
    assert results["order"] == [[m for m in plan["order"][0] if m in measured]]
    assert [r for r in results["runs"] if "errors" in r] == []
    for mode in measured:
        proxied = mode in plan["nfqproxy_modes"]
        extra = {"rss_mb", "ready_seconds"} if proxied else set()
        assert set(results["summary"][mode]) == PACKET_MEASURES | extra, mode
        if proxied:
            # Every connection made reached the queue's decision at least once.
            decided = results["decisions"][mode]
            assert decided["made"] > 0 and decided["lowest_decided_per_connection"] >= 1, mode
    assert results["metadata"]["git_commit"] and results["metadata"]["cores"] >= 1
    assert results["bytes_per_flow"]["fast"] > 0
    assert results["maglev_build_ms"]["compiled"]["median"] > 0
    assert {row["verdict"] for row in results["targets"]} <= {
        "met",
        "not met",
        "within the spread",
        "not measured",
    }
    report = (out / "report.md").read_text()
    assert all(f"| {plan['titles'][mode]} |" in report for mode in measured)
    for section in ("## Every measured connection reached the decision", "## Targets"):
        assert section in report
    assert all(f"- {mode}: {reason}" in report for mode, reason in skipped.items())
    assert (out / "datapath.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in netns.names() if n.startswith(plan["lab_prefix"])]
