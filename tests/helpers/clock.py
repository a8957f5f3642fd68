"""The test clock: a callable that returns the time it is set to, for the clock= argument
of data paths, the health server and the liveness check."""

from __future__ import annotations


class FakeClock:
    """Returns `now`, which moves only when a test sets or advances it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
