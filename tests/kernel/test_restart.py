"""50 long TCP transfers through the VIP survive the data-path process dying and coming
back: killed, stopped cleanly, or replaced by another implementation (an upgrade); and
killed while the API server it follows is slow or down when it comes back."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from nfqproxy.datapath import factory
from nfqproxy_lab.proxy import read_status, start_proxy, wait_ready
from nfqproxy_lab.servers import blob
from nfqproxy_lab.topology import HTTP_PORT, WEB_VIP
from nfqproxy_lab.traffic import fetch_url, http_get, http_slow_download_digest, parallel
from tests.helpers.datapaths import DATAPATHS, EVERY_PACKET, datapath_params
from tests.helpers.labs import RunningLab, lab_with_api_proxy, lab_with_proxy, new_lab

pytestmark = pytest.mark.kernel
# The paths that see every packet and can run here, least preferred first.
EVERY_PACKET_HERE = [name for name in DATAPATHS if name in EVERY_PACKET]
TRANSFERS = 50
SIZE = 3 * 1024 * 1024  # read 32 KiB every 20 ms: about 2 s each


def transfers_across(running: RunningLab, restart: Callable[[], None]) -> list[str]:
    results: list[str] = []
    client = threading.Thread(
        target=lambda: results.extend(
            running.client.call(
                parallel, http_slow_download_digest, TRANSFERS, WEB_VIP, HTTP_PORT, SIZE
            )
        )
    )
    client.start()
    time.sleep(0.7)  # every transfer under way
    restart()
    client.join(90)
    return results


@pytest.mark.parametrize("datapath", datapath_params())
def test_kill_9_and_a_restart_in_the_middle_of_50_transfers_breaks_none(datapath: str) -> None:
    with lab_with_proxy("--datapath", datapath) as running:

        def kill_and_restart() -> None:
            assert running.proxy is not None
            os.kill(running.proxy.pid, signal.SIGKILL)
            running.proxy.wait(5)
            running.start_proxy("--datapath", datapath)

        results = transfers_across(running, kill_and_restart)
    expected = hashlib.sha256(blob(SIZE)).hexdigest()
    assert results.count(expected) == TRANSFERS, [r for r in results if r != expected][:3]


@pytest.mark.parametrize("datapath", datapath_params())
def test_kill_9_and_an_endpoint_added_while_down_breaks_none_of_50_transfers(
    datapath: str,
) -> None:
    """A backend joins while no process runs: the new process's Maglev table differs, yet
    every open transfer keeps its backend, and new connections reach the new one."""
    if factory.DATAPATHS[datapath].every_packet:
        # A request of an open flow that reaches a new process before any reply of that
        # flow is steered by the new table (docs/design.md, "Restarts"); only the offload
        # path keeps its flows in the kernel, whatever the new table says.
        pytest.skip(f"{datapath} recovers flows from replies, not from the kernel")
    running = RunningLab(new_lab(4))
    try:
        running.lab.up()
        running.lab.write_manifests([1, 2, 3])
        running.start_proxy("--datapath", datapath)

        def kill_change_and_restart() -> None:
            assert running.proxy is not None
            os.kill(running.proxy.pid, signal.SIGKILL)
            running.proxy.wait(5)
            running.lab.write_manifests([1, 2, 3, 4])
            running.start_proxy("--datapath", datapath)

        results = transfers_across(running, kill_change_and_restart)
        answers = {running.client.call(http_get, WEB_VIP, HTTP_PORT) for _ in range(60)}
    finally:
        running.close()
    expected = hashlib.sha256(blob(SIZE)).hexdigest()
    assert results.count(expected) == TRANSFERS, [r for r in results if r != expected][:3]
    assert "be4" in answers, answers


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (DATAPATHS[-1], DATAPATHS[-1]),
        (EVERY_PACKET_HERE[0], EVERY_PACKET_HERE[-1]),
    ],
    ids=["clean-restart", "upgrade"],
)
def test_a_clean_stop_with_keep_hooks_and_a_new_process_break_none_of_50_transfers(
    before: str, after: str
) -> None:
    """The upgrade case hands the flows to another implementation of the data path that
    sees every packet (reference to fast): recovery rests on Maglev's pinned hashing, not on
    process state. Between those and the offload path, open flows do not move
    (docs/design.md, "The offload path")."""
    stops: list[float] = []  # SIGTERM to exit, under the 50 transfers
    with lab_with_proxy("--datapath", before, "--keep-hooks-on-exit") as running:

        def stop_and_start() -> None:
            assert running.proxy is not None
            started = time.monotonic()
            running.proxy.send_signal(signal.SIGTERM)
            assert running.proxy.wait(10) == 0
            stops.append(time.monotonic() - started)
            running.start_proxy("--datapath", after, "--keep-hooks-on-exit")

        results = transfers_across(running, stop_and_start)
        log = (running.lab.dir / "proxy.log").read_text()
        assert "leaving the hook rules for the next process" in log
    expected = hashlib.sha256(blob(SIZE)).hexdigest()
    assert results.count(expected) == TRANSFERS, [r for r in results if r != expected][:3]
    assert stops[0] <= 2.0, f"SIGTERM took {stops[0]:.1f} s"  # once 20 s: a starved loop


HEALTH = "http://127.0.0.1:10256"
API_LIST_DELAY = 5.0
API_DOWN_FOR = 10.0


@pytest.mark.parametrize("outage", ["slow-lists", "api-down"])
@pytest.mark.parametrize("datapath", datapath_params())
def test_kill_9_and_a_restart_while_the_api_is_slow_or_down_breaks_none_of_50_transfers(
    datapath: str, outage: str
) -> None:
    """The new process holds service packets in its queue until its first complete list has
    programmed the tables: the flows stall, none is rejected, and all finish."""
    with lab_with_api_proxy("--datapath", datapath) as (running, api):
        waited: list[float] = []
        probes: list[int] = []  # /livez, /healthz while the API is down

        def kill_and_restart_with_the_api_away() -> None:
            assert running.proxy is not None
            os.kill(running.proxy.pid, signal.SIGKILL)
            running.proxy.wait(5)
            if outage == "slow-lists":
                api.server.faults.list_delay = API_LIST_DELAY
            else:
                api.go_down()
            started = time.monotonic()
            running.proxy = start_proxy(running.lab, "--datapath", datapath, api_server=api.url)
            if outage == "api-down":
                time.sleep(API_DOWN_FOR)
                assert not read_status(running.lab).get("ready"), "ready without an API"
                # Waiting is not wedged: live for the kubelet, not yet ready.
                probes.append(running.node.call(fetch_url, f"{HEALTH}/livez")[0])
                probes.append(running.node.call(fetch_url, f"{HEALTH}/healthz")[0])
                api.come_back()
            wait_ready(running.lab, running.proxy, 60)
            waited.append(time.monotonic() - started)

        results = transfers_across(running, kill_and_restart_with_the_api_away)
        counters = read_status(running.lab)["counters"]
    expected = hashlib.sha256(blob(SIZE)).hexdigest()
    print(f"{outage}, {datapath}: tables programmed {waited[0]:.1f} s after the restart")
    assert waited[0] >= (API_LIST_DELAY if outage == "slow-lists" else API_DOWN_FOR)
    assert results.count(expected) == TRANSFERS, [r for r in results if r != expected][:3]
    assert not [name for name in counters if name.startswith("reject_")], counters
    if outage == "api-down":
        assert probes == [200, 503]
