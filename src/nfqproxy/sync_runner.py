"""When to sync: kube-proxy's bounded-frequency runner, on asyncio.

Changes only *request* a sync. The runner then syncs:
- at once if the last sync is at least min_interval ago, else as soon as it is
  (a burst of requests becomes one sync);
- every max_interval regardless (a periodic resync that repairs drift);
- after a failed sync, again after retry_interval, doubling up to max_interval.

The decisions live in next_delay() and tick(), which take the time from an injectable
clock, so tests drive the runner step by step and never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class BoundedFrequencyRunner:
    def __init__(
        self,
        sync: Callable[[], Awaitable[None]],
        min_interval: float,
        max_interval: float,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_interval < 0 or max_interval <= 0 or min_interval > max_interval:
            raise ValueError(
                f"need 0 <= min interval ({min_interval}) <= max interval ({max_interval})"
            )
        self.sync = sync
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.retry_interval = retry_interval
        self.clock = clock
        self.pending = True  # the first sync is always due
        self.last_attempt: float | None = None
        self.last_success: float | None = None
        self.failures = 0
        self._wake = asyncio.Event()

    def request(self) -> None:
        """Asks for a sync; cheap, so change handlers call it for every change."""
        self.pending = True
        self._wake.set()

    def next_delay(self) -> float:
        """Seconds until the next sync is due (0: now)."""
        if self.last_attempt is None:
            return 0.0
        since = self.clock() - self.last_attempt
        if self.failures:
            backoff = min(self.retry_interval * 2.0 ** (self.failures - 1), self.max_interval)
            return max(0.0, max(backoff, self.min_interval) - since)
        if self.pending:
            return max(0.0, self.min_interval - since)
        return max(0.0, self.max_interval - since)

    async def tick(self) -> float:
        """Syncs if due; returns the delay until the next decision."""
        delay = self.next_delay()
        if delay > 0:
            return delay
        self.pending = False
        self.last_attempt = self.clock()
        try:
            await self.sync()
        except Exception:
            self.failures += 1
            log.exception("sync failed (%d in a row); retrying", self.failures)
        else:
            self.failures = 0
            self.last_success = self.clock()
        return self.next_delay()

    async def run(self) -> None:
        """Runs until cancelled."""
        while True:
            delay = await self.tick()
            self._wake.clear()
            if delay > 0 and not self.pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            elif delay > 0:
                await asyncio.sleep(delay)  # pending, but within min_interval of the last sync
