"""Health answers 503 once syncs stall for more than twice the sync period."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nfqproxy.health import LOOP_STALL_SECONDS, HealthServer, Liveness, parse_bind_address
from nfqproxy.metrics import ProxyMetrics, kernel_queue_drops
from tests.helpers.clock import FakeClock


def serve_health(last_success: float | None, now: float) -> tuple[int, dict[str, object]]:
    server = HealthServer(lambda: last_success, 30.0, ProxyMetrics(dict, 100), clock=FakeClock(now))

    async def scenario() -> tuple[int, dict[str, object]]:
        app = web.Application()
        app.add_routes([web.get("/healthz", server._health)])
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/healthz")
            return response.status, await response.json()

    return asyncio.run(scenario())


def test_fresh_syncs_are_healthy_and_stalled_ones_are_503() -> None:
    assert serve_health(1000.0, 1059.0)[0] == 200
    status, body = serve_health(1000.0, 1061.0)
    assert status == 503 and body["healthy"] is False and body["staleAfterSeconds"] == 60.0
    assert serve_health(None, 1000.0)[0] == 503  # never synced


@pytest.mark.parametrize("text", ["10249", "host:", ":80", "h:70000", "h:x"])
def test_bad_bind_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_bind_address(text, "--metrics-bind-address")
    assert parse_bind_address("", "--x") is None
    assert parse_bind_address("0.0.0.0:10256", "--x") == ("0.0.0.0", 10256)


def test_kernel_queue_drops_are_read_for_our_queue_only(tmp_path: Path) -> None:
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text(
        "    0  12345     0 2 65535     7     3        10  1\n"
        "  100    999     0 2 65535     5     1        99  1\n"
    )
    assert kernel_queue_drops(100, proc) == {"queue_full": 5, "netlink_undeliverable": 1}
    assert kernel_queue_drops(7, proc) == {}
    assert kernel_queue_drops(100, Path("/nonexistent")) == {}


def liveness(synced: bool, last_attempt: float | None) -> tuple[Liveness, FakeClock]:
    clock = FakeClock(100.0)
    return Liveness(30.0, lambda: synced, lambda: last_attempt, clock), clock


def test_a_proxy_waiting_for_its_first_list_is_alive_however_long_it_waits() -> None:
    live, clock = liveness(synced=False, last_attempt=None)
    for _ in range(100):  # 1000 s without a sync, the loop turning all along
        clock.now += 10.0
        live.beat()
    ok, body = live.check()
    assert ok and body["waitingForFirstSync"] is True


def test_a_stalled_event_loop_is_not_alive() -> None:
    live, clock = liveness(synced=False, last_attempt=None)
    clock.now += LOOP_STALL_SECONDS + 0.5  # no beat: the loop did not turn
    ok, body = live.check()
    assert not ok and body["eventLoopStalledSeconds"] == LOOP_STALL_SECONDS + 0.5


def test_after_the_first_sync_a_runner_that_stops_attempting_syncs_is_not_alive() -> None:
    live, clock = liveness(synced=True, last_attempt=100.0)
    clock.now = 159.0
    live.beat()
    assert live.check()[0]  # within two sync periods of the last attempt
    clock.now = 161.0
    live.beat()
    assert not live.check()[0]
