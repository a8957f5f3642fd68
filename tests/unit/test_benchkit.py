"""What the benchmarks share (nfqproxy_lab.benchkit): the rotation of the modes, spreads,
noise and verdicts, what the queue decided, the progress line and the run's metadata."""

from __future__ import annotations

import re

import pytest

from nfqproxy.datapath import factory
from nfqproxy_lab.benchkit import (
    MET,
    NOISE,
    NOT_MEASURED,
    NOT_MET,
    Progress,
    datapath_unavailable,
    decision_totals,
    format_duration,
    metadata_markdown,
    overlap,
    paired_ratios,
    rotated,
    run_metadata,
    spread,
    verdict,
)
from tests.helpers.paths import ROOT

MODES = ["kernel", "nftables", "fast", "offload-1q", "offload-nq"]


def test_each_round_starts_with_the_next_mode_and_keeps_the_cycle() -> None:
    orders = [rotated(MODES, r) for r in range(len(MODES) + 2)]
    assert [order[0] for order in orders] == [*MODES, *MODES[:2]]
    for order in orders:
        assert sorted(order) == sorted(MODES)
        start = MODES.index(order[0])
        assert order == MODES[start:] + MODES[:start]
    # Over len(MODES) rounds every mode runs in every position once.
    for position in range(len(MODES)):
        assert {orders[r][position] for r in range(len(MODES))} == set(MODES)
    assert rotated([], 3) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (44.6, "45 s"),
        (59.4, "59 s"),
        (60, "1 min 00 s"),
        (185, "3 min 05 s"),
        (3599, "59 min 59 s"),
        (3720, "1 h 02 min"),
        (-3, "0 s"),
    ],
)
def test_durations_read_as_a_person_would_say_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_time_left_comes_from_the_steps_done_of_the_same_kind_then_group_then_all() -> None:
    clock = Clock()
    steps = [("100", "lab"), ("100", "fast"), ("10000", "lab"), ("10000", "fast")] * 2
    progress = Progress(list(steps), clock=clock)
    line = progress.start("round 1/2, N = 100: lab", "100", "lab")
    assert line.startswith("[1/8] round 1/2, N = 100: lab (0 s elapsed, ")
    assert "time left unknown" in line
    clock.now += 10
    progress.finish()
    # Unknown kinds take the mean of everything done: 7 steps of 10 s.
    assert progress.start("fast", "100", "fast").endswith("(10 s elapsed, about 1 min 10 s left)")
    clock.now += 30
    progress.finish()
    # Nothing done at 10000 yet: the mean of all (20 s); at 100, each kind its own.
    assert progress.seconds_left() == pytest.approx(20 + 20 + 10 + 30 + 20 + 20)
    # A group's steps of another kind take the group's mean: nothing yet at 10000, so all.
    progress.start("lab", "10000", "lab")
    clock.now += 100
    progress.finish()
    # (10000, fast): no such step yet; group 10000's mean is 100.
    assert progress.seconds_left() == pytest.approx(100 + 10 + 30 + 100 + 100)
    progress.forget("fast")
    assert progress.seconds_left() == pytest.approx(10 + 100)
    assert progress.start("lab", "100", "lab").startswith("[4/5] ")
    progress.skip("100", "lab")
    assert progress.pending == [("10000", "lab")]


def test_ratios_pair_rounds_and_a_target_straddled_by_the_rounds_is_noise() -> None:
    assert paired_ratios({0: 9.0, 1: 8.0, 2: 5.0}, {0: 10.0, 1: 0.0, 3: 1.0}) == [0.9]
    assert verdict([0.95, 0.91], 0.9, at_most=False) == MET
    assert verdict([0.95, 0.85], 0.9, at_most=False) == NOISE
    assert verdict([0.8, 0.85], 0.9, at_most=False) == NOT_MET
    assert verdict([4.0, 10.0], 10.0, at_most=True) == MET
    assert verdict([], 10.0, at_most=True) == NOT_MEASURED
    a, b, c = spread([1.0, 2.0, 3.0]), spread([2.5, 4.0]), spread([3.5, 5.0])
    assert a == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert overlap(a, b) and overlap(b, c) and not overlap(a, c)


def test_decisions_are_summed_over_rounds_and_the_lowest_ratio_kept() -> None:
    taken: list[dict[str, int | None]] = [
        {"made": 100, "failed": 1, "reused_ports": 0, "decided": 100, "new_flows": 100},
        {"made": 200, "failed": 0, "reused_ports": 3, "decided": 190, "new_flows": None},
    ]
    totals = decision_totals(taken)
    assert totals["made"] == 300 and totals["decided"] == 290 and totals["failed"] == 1
    assert totals["new_flows"] is None  # one round lacked it: no partial sum
    assert totals["lowest_decided_per_connection"] == pytest.approx(0.95)
    assert decision_totals([{"made": 5}])["lowest_decided_per_connection"] is None


def test_the_metadata_names_the_machine_the_tools_and_the_commit() -> None:
    metadata = run_metadata(ROOT)
    assert metadata["cores"] >= 1 and metadata["kernel"] and metadata["cpu_model"]
    for tool in ("iptables", "nft"):
        assert metadata[tool]
    assert re.fullmatch(r"[0-9a-f]{40}( \(dirty\))?", metadata["git_commit"])
    lines = metadata_markdown({"git_commit": "abc", "extra": 1, "cpu_model": "X"})
    assert lines[2:] == ["| CPU | X |", "| git commit | abc |", "| extra | 1 |"]


def test_an_unknown_or_unbuilt_data_path_is_named_with_the_reason() -> None:
    for name in factory.available():
        assert datapath_unavailable(name) is None
    assert "DATAPATHS" in (datapath_unavailable("no-such-path") or "")
