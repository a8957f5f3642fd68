"""HTTP endpoints: /healthz and /livez (JSON, as kube-proxy serves them) and /metrics.

/healthz (readiness): healthy while the last successful sync is at most twice the sync
period old; the periodic resync keeps that true on a quiet cluster, so staleness means
syncs stalled or never happened.

/livez (startup and liveness): fails only when the process is wedged, so that the kubelet
restarts it only when a restart can help. A proxy waiting for its first complete list
(an API server that is down, say) is alive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nfqproxy.metrics import ProxyMetrics


def parse_bind_address(text: str, option: str) -> tuple[str, int] | None:
    """'host:port' -> (host, port); '' -> None (the endpoint is off)."""
    if text == "":
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{option} must be HOST:PORT or empty, got {text!r}")
    return host, int(port)


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


LOOP_STALL_SECONDS = 10.0  # no heartbeat of the event loop for this long: wedged


@dataclass
class Liveness:
    """Whether the process still makes progress. Wedged means: the event loop's heartbeat
    (beat(), every half second) is older than LOOP_STALL_SECONDS, or, once synced, the sync
    runner has attempted no sync for two sync periods (it attempts one every period, failing
    or not). Waiting for the first sync is not wedged."""

    sync_period: float
    synced: Callable[[], bool]
    last_attempt: Callable[[], float | None]  # the runner's, on the monotonic clock
    clock: Callable[[], float] = time.monotonic
    heartbeat: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.heartbeat = self.clock()

    def beat(self) -> None:
        self.heartbeat = self.clock()

    def check(self) -> tuple[bool, dict[str, object]]:
        now, attempt, synced = self.clock(), self.last_attempt(), self.synced()
        loop_stalled = now - self.heartbeat
        since_attempt = None if attempt is None else now - attempt
        syncs_stalled = synced and (since_attempt is None or since_attempt > 2 * self.sync_period)
        live = loop_stalled <= LOOP_STALL_SECONDS and not syncs_stalled
        return live, {
            "healthy": live,
            "waitingForFirstSync": not synced,
            "eventLoopStalledSeconds": round(loop_stalled, 3),
            "lastSyncAttemptSecondsAgo": None if since_attempt is None else round(since_attempt, 3),
        }


class HealthServer:
    def __init__(
        self,
        last_success: Callable[[], float | None],
        sync_period: float,
        metrics: ProxyMetrics,
        clock: Callable[[], float] = time.time,
        liveness: Liveness | None = None,
    ) -> None:
        self.last_success = last_success
        self.sync_period = sync_period
        self.metrics = metrics
        self.clock = clock
        self.liveness = liveness
        self._runners: list[web.AppRunner] = []

    def healthy(self) -> tuple[bool, dict[str, object]]:
        last, now = self.last_success(), self.clock()
        ok = last is not None and now - last <= 2 * self.sync_period
        return ok, {
            "lastUpdated": _iso(last),
            "currentTime": _iso(now),
            "healthy": ok,
            "staleAfterSeconds": 2 * self.sync_period,
        }

    async def _health(self, request: web.Request) -> web.Response:
        ok, body = self.healthy()
        return web.json_response(body, status=200 if ok else 503)

    async def _live(self, request: web.Request) -> web.Response:
        if self.liveness is None:
            return await self._health(request)
        ok, body = self.liveness.check()
        _, readiness = self.healthy()
        body["lastUpdated"], body["currentTime"] = (
            readiness["lastUpdated"],
            readiness["currentTime"],
        )
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(
        self, health_at: tuple[str, int] | None, metrics_at: tuple[str, int] | None
    ) -> None:
        for address, routes in (
            (health_at, [web.get("/healthz", self._health), web.get("/livez", self._live)]),
            (metrics_at, [web.get("/metrics", self._metrics)]),
        ):
            if address is None:
                continue
            app = web.Application()
            app.add_routes(routes)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, address[0], address[1]).start()
            self._runners.append(runner)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
