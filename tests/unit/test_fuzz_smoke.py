"""A short pass of the fast path's fuzz harness (bench/fuzz_datapath.py) in the suite."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nfqproxy.datapath.fast.datapath import fast_path_available
from tests.helpers.paths import ROOT


@pytest.mark.skipif(not fast_path_available(), reason="the fast path is not built")
def test_20k_fuzzed_packets_crash_nothing_and_match_the_reference() -> None:
    # A subprocess: a crash in C must fail this test, not end the test run.
    run = subprocess.run(
        [sys.executable, "-m", "bench.fuzz_datapath", "--inputs", "20000", "--seed", "7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["inputs"] == 20000 and report["disagreements"] == []
    assert sum(report["verdicts"].values()) == 20000
