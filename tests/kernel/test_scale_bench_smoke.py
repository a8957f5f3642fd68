"""The scale benchmark runs end to end, tiny (one round, N = 100, 0.3 s rates, 3 changes,
six modes, nfqproxy at its default --min-sync-period among them), and writes a complete
report.

This checks the report's structure, never its numbers: speed is the benchmark's business.
What a complete report holds (sizes, modes, measures and which modes take them, the names
of the labs it must take down) is what the benchmark's --plan says: tests do not import
bench. A mode this machine cannot run is left out with its reason, not failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfqproxy_lab import netns
from nfqproxy_lab.topology import all_labs
from tests.helpers.bench import benchmark_plan, run_benchmark

pytestmark = pytest.mark.kernel
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_options() -> list[str]:
    """One round at N = 100 of kube-proxy's two layouts' cheapest back ends, the first-packet
    floor, nfqproxy fast at --min-sync-period 0 and at its default, and offload."""
    default_sync = benchmark_plan("bench")["programming_only"]
    modes = ["iptables-nft", "nftables", "queue-floor", "fast", *default_sync[:1], "offload-1q"]
    return ["--quick", "--sizes", "100", "--seconds", "0.3", "--changes", "3", "--modes", *modes]


def test_a_tiny_scale_run_reports_every_measure_for_every_mode_it_could_run(
    tmp_path: Path,
) -> None:
    options = tiny_options()
    plan = benchmark_plan("bench", *options)
    out = run_benchmark("bench", tmp_path, *options, timeout=300)
    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == plan["sizes"] == [100]
    skipped = results["skipped"]
    assert set(plan["unavailable"]) <= set(skipped) and all(skipped.values())
    assert set(plan["modes"]) - set(plan["optional_modes"]) <= set(results["modes"])
    assert set(results["modes"]) | set(skipped) == set(plan["modes"])
    assert results["measures"] == plan["measures"]
    assert results["order"] == [{"100": [m for m in plan["order"][0]["100"] if m not in skipped]}]
    assert [r for r in results["runs"] if "errors" in r] == []
    for key, measure in plan["measures"].items():
        for mode in results["modes"]:
            takes_it = measure["scope"] == "every mode" or mode not in plan["programming_only"]
            takes_it &= key.split(".")[0] not in plan["skipped_measures"].get(mode, [])
            sizes = set(results["summary"].get(key, {}).get(mode, {}))
            assert sizes == ({"100"} if takes_it else set()), (key, mode, sizes)
    for mode in set(results["modes"]) & set(plan["nfqproxy_modes"]) - set(plan["programming_only"]):
        for measure in ("connect_decisions", "connection_decisions"):
            # Every connection made reached the queue's decision at least once.
            decided = results["decisions"][measure][mode]["100"]
            assert decided["made"] > 0 and decided["lowest_decided_per_connection"] >= 1
    assert results["metadata"]["git_commit"] and results["metadata"]["cores"] >= 1
    assert results["kep_3866"]["findings"]
    assert {row["verdict"] for row in results["targets"]} <= {
        "met",
        "not met",
        "within the spread",
        "not measured",
    }
    report = (out / "report.md").read_text()
    for section in (
        "## Targets",
        "## Start to ready, next to the restore time (s)",
        "## Every measured connection reached the decision",
        "## First-packet latency against KEP-3866's published figures",
        "## Order of the modes, round by round",
    ):
        assert section in report
    for measure in plan["measures"].values():
        assert f"## {measure['title']}" in report and f"How: {measure['how']}." in report
    for plot in ("latency", "programming", "throughput"):
        assert (out / f"{plot}.png").read_bytes()[:8] == PNG
    assert not [n for n in netns.names() if n.startswith(plan["lab_prefix"])]
    assert not [name for name in all_labs() if name.startswith(plan["lab_prefix"])]
