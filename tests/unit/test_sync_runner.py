"""The bounded-frequency runner, driven tick by tick on a fake clock: no test sleeps."""

from __future__ import annotations

import asyncio

import pytest

from nfqproxy.sync_runner import BoundedFrequencyRunner
from tests.helpers.clock import FakeClock


class Harness:
    def __init__(self, min_interval: float = 1.0, max_interval: float = 30.0) -> None:
        self.clock = FakeClock(100.0)
        self.syncs: list[float] = []
        self.fail_next = 0
        self.runner = BoundedFrequencyRunner(
            self.sync, min_interval, max_interval, retry_interval=2.0, clock=self.clock
        )

    @property
    def now(self) -> float:
        return self.clock.now

    @now.setter
    def now(self, value: float) -> None:
        self.clock.now = value

    async def sync(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("API unavailable")
        self.syncs.append(self.now)

    def tick(self) -> float:
        return asyncio.run(self.runner.tick())


def test_the_first_sync_runs_at_once() -> None:
    h = Harness()
    assert h.tick() == 30.0 and h.syncs == [100.0]


def test_a_burst_of_changes_within_the_minimum_interval_becomes_one_sync() -> None:
    h = Harness()
    h.tick()
    h.now += 0.25
    for _ in range(50):
        h.runner.request()
    assert h.tick() == pytest.approx(0.75) and h.syncs == [100.0]
    h.now += 0.75
    assert h.tick() == 30.0 and h.syncs == [100.0, 101.0]


def test_a_change_after_the_minimum_interval_syncs_at_once() -> None:
    h = Harness()
    h.tick()
    h.now += 5
    h.runner.request()
    h.tick()
    assert h.syncs == [100.0, 105.0]


def test_with_no_changes_it_resyncs_every_maximum_interval() -> None:
    h = Harness()
    h.tick()
    h.now += 29.9
    h.tick()
    h.now += 0.1
    h.tick()
    assert h.syncs == [100.0, 130.0]


def test_a_failed_sync_is_retried_with_doubling_backoff_and_success_resets_it() -> None:
    h = Harness()
    h.fail_next = 3
    assert h.tick() == 2.0 and h.runner.failures == 1 and h.runner.last_success is None
    h.now += 2
    assert h.tick() == 4.0 and h.runner.failures == 2
    h.now += 4
    assert h.tick() == 8.0 and h.runner.failures == 3
    h.runner.request()  # a change does not cut the backoff short
    h.now += 1
    assert h.tick() == pytest.approx(7.0) and h.syncs == []
    h.now += 7
    assert h.tick() == 30.0 and h.syncs == [114.0] and h.runner.failures == 0
    assert h.runner.last_success == 114.0


def test_min_sync_period_zero_syncs_every_change_at_once() -> None:
    h = Harness(min_interval=0.0)
    h.tick()
    for step in range(3):
        h.now += 0.001
        h.runner.request()
        h.tick()
        assert len(h.syncs) == step + 2


def test_inconsistent_intervals_are_refused() -> None:
    async def nothing() -> None: ...

    with pytest.raises(ValueError, match="min interval"):
        BoundedFrequencyRunner(nothing, 5.0, 1.0)
