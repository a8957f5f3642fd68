"""While a flood saturates the queue, the event loop still gets its turn: SIGTERM ends the
proxy within 2 s, an endpoint change reaches traffic as fast as on an idle proxy, and
/healthz and /metrics answer within 1 s. On every data path, under a TCP and a small-UDP
flood (iperf3 through a VIP)."""

from __future__ import annotations

import resource
import selectors
import signal
import socket
import time

import pytest

from nfqproxy.datapath import factory
from nfqproxy_lab.flood import FloodKind, queue_rate, serve_iperf, start_flood
from nfqproxy_lab.proxy import read_status
from nfqproxy_lab.topology import DNS_PORT, WEB_VIP
from nfqproxy_lab.traffic import fetch_url
from tests.helpers.datapaths import datapath_params
from tests.helpers.labs import RunningLab, lab_with_proxy

pytestmark = pytest.mark.kernel
FLOOD_SECONDS = 60  # longer than the test: the flood is still on when the proxy stops
STOP_WITHIN = 2.0
ANSWER_WITHIN = 1.0
# An endpoint change under load may reach the tables this much later than on the idle
# proxy (about one manifest poll, 0.2 s); a starved loop takes as long as the flood lasts.
CHANGE_SLACK = 0.5
# Traffic shows the change later than the tables do by the time probes wait in the full
# queue, both ways (8192 packets at the reference path's 25-40k/s are 0.2-0.35 s each way),
# and by the probes the full queue drops (4 in 5 under a UDP flood on that path).
QUEUE_DELAY_SLACK = 3.0
MIN_SYNC_PERIOD = 1.0  # the proxy's default
# New UDP flows every 10 ms while waiting for the new backend. The reference path takes
# about 1 in 7 packets of a UDP flood into its queue, so a probe and its answer both get
# through about 1 time in 50: with 4 per 10 ms, runs waited up to 14 s for that first
# success; with 16, 0.9-1.7 s over 7 runs. Each waits 2 s: up to 3,200 sockets open.
PROBES = 16
PROBE_SOCKETS = PROBES * 100 * 2


def first_answer_from(backend: str, since: float, timeout: float) -> float:
    """Seconds from since until a new UDP flow to the web VIP is answered by backend.

    PROBES probes every 10 ms, each from a new socket (so a new flow, which takes the
    current endpoints), and each waited for up to 2 s: under a flood the queue loses most probes
    and holds the rest for a while, both ways."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = PROBE_SOCKETS + 1024  # the rest of the process's files, with room
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard > soft):
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    most = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1024  # probes open at once
    deadline = time.monotonic() + timeout
    waiting: dict[socket.socket, float] = {}
    next_probe = 0.0
    with selectors.DefaultSelector() as selector:
        try:
            while (now := time.monotonic()) < deadline:
                for _ in range(PROBES if now >= next_probe and len(waiting) < most else 0):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    sock.connect((WEB_VIP, DNS_PORT))
                    sock.send(b"who?")
                    selector.register(sock, selectors.EVENT_READ)
                    waiting[sock] = now
                    next_probe = now + 0.01
                for key, _ in selector.select(0.005):
                    sock = key.fileobj  # type: ignore[assignment]
                    try:
                        if sock.recv(64).decode() == backend:
                            return time.monotonic() - since
                    except OSError:
                        pass  # refused while a change lands: try the next
                    waiting[sock] = 0.0  # answered: done with it
                for sock in [s for s, sent in waiting.items() if sent < now - 2.0]:
                    selector.unregister(sock)
                    sock.close()
                    del waiting[sock]
        finally:
            for sock in waiting:
                sock.close()
    raise TimeoutError(f"no answer from {backend} within {timeout} s")


def programmed_after(running: RunningLab, written: float, timeout: float = 15.0) -> float:
    """Seconds from written (wall clock) to the first sync after it, as the proxy's status
    file records it: when the change is in the tables."""
    deadline = time.monotonic() + timeout
    while (last_sync := read_status(running.lab).get("last_sync") or 0) <= written:
        assert time.monotonic() < deadline, "the change never took effect"
        time.sleep(0.02)
    return float(last_sync) - written


def endpoint_change(running: RunningLab) -> tuple[float, float]:
    """Moves the web service from backends 1 and 2 to backend 3. Returns the seconds until
    the tables held the change and until traffic showed it (an answer from backend 3).
    Starts from backends 1 and 2 in force and the minimum sync interval past, so that
    the change is not held back by it."""
    written = time.time()
    running.lab.write_manifests([1, 2])
    programmed_after(running, written)
    time.sleep(MIN_SYNC_PERIOD + 0.1)
    started, written = time.monotonic(), time.time()
    running.lab.write_manifests([3])
    answered = running.client.call(first_answer_from, "be3", started, 15.0)
    return programmed_after(running, written), answered


def slowest_answer(running: RunningLab, url: str, tries: int = 5) -> float:
    slowest = 0.0
    for _ in range(tries):
        started = time.monotonic()
        status, _ = running.node.call(fetch_url, url, 5.0)
        slowest = max(slowest, time.monotonic() - started)
        assert status == 200, url
        time.sleep(0.1)
    return slowest


@pytest.mark.parametrize("flood", ["tcp", "udp"])
@pytest.mark.parametrize("datapath", datapath_params())
def test_a_flooded_proxy_stops_syncs_and_answers_in_time(datapath: str, flood: FloodKind) -> None:
    with lab_with_proxy("--datapath", datapath) as running:
        assert running.proxy is not None
        serve_iperf(running.lab)
        idle_programmed, idle_answered = endpoint_change(running)

        # A path that sees only first packets is flooded with first packets.
        new_flows = not factory.DATAPATHS[datapath].every_packet
        start_flood(running.lab, flood, FLOOD_SECONDS, new_flows)
        packets, drops = queue_rate(running.lab)
        handled = read_status(running.lab)
        loaded_programmed, loaded_answered = endpoint_change(running)
        healthz = slowest_answer(running, "http://127.0.0.1:10256/healthz")
        metrics = slowest_answer(running, "http://127.0.0.1:10249/metrics")
        flood_on, _ = queue_rate(running.lab, 0.5)

        started = time.monotonic()
        running.proxy.send_signal(signal.SIGTERM)
        code = running.proxy.wait(30)
        stop = time.monotonic() - started
    print(
        f"{datapath} under a {flood} flood of {packets:.0f} queued packets/s "
        f"({drops:.0f}/s dropped by the kernel, {flood_on:.0f}/s at the end): "
        f"endpoint change in the tables after {idle_programmed:.2f} s idle, "
        f"{loaded_programmed:.2f} s loaded, first answered by the new backend after "
        f"{idle_answered:.2f} s idle, {loaded_answered:.2f} s loaded; "
        f"slowest /healthz {healthz * 1000:.0f} ms, /metrics {metrics * 1000:.0f} ms; "
        f"SIGTERM to exit {stop:.2f} s; {handled.get('syncs')} syncs before the change"
    )
    assert packets > 5000 and flood_on > 5000, "the flood did not reach the queue"
    assert code == 0
    assert stop <= STOP_WITHIN
    assert healthz <= ANSWER_WITHIN and metrics <= ANSWER_WITHIN
    assert loaded_programmed <= idle_programmed + CHANGE_SLACK
    assert loaded_answered <= loaded_programmed + QUEUE_DELAY_SLACK
