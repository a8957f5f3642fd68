"""Every measure of one competitor at one N: connect latency, connection rate,
throughput, memory, and endpoint changes timed by the traffic that finds them."""

from __future__ import annotations

import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from bench.scale.cluster import Cluster, service_vip
from bench.scale.competitors import Competitor
from bench.scale.settings import (
    CHANGE_TRAFFIC_PAUSE_US,
    IPERF_PORT,
    IPERF_VIP,
    MAX_CHANGES,
    SERVICE_PORT,
    THROUGHPUT_SIZE,
    RunSettings,
)
from bench.traffic import tcp_gbits, udp_small
from nfqproxy_lab import netns
from nfqproxy_lab.netns import NetnsThread
from nfqproxy_lab.topology import Lab


def tcpbench(
    lab: Lab, namespace: str, *args: str, timeout: float = 120, cpu: int | None = None
) -> str:
    pinned = [] if cpu is None else ["taskset", "-c", str(cpu)]
    result = subprocess.run(
        netns.exec_command(namespace, [*pinned, str(lab.dir / "tcpbench"), *args]),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout


@contextmanager
def pinned(process: subprocess.Popen[bytes] | None, cpus: set[int]) -> Iterator[None]:
    """Every thread of process on cpus, for the duration; then on every CPU again."""
    everywhere = os.sched_getaffinity(0)

    def pin(allowed: set[int]) -> None:
        if process is not None:
            for tid in os.listdir(f"/proc/{process.pid}/task"):
                with suppress(ProcessLookupError):
                    os.sched_setaffinity(int(tid), allowed)

    pin(cpus)
    try:
        yield
    finally:
        pin(everywhere)


def connect_latencies_us(lab: Lab, vips: list[str], count: int) -> list[dict[str, float]]:
    """connect() percentiles for each VIP, measured in alternating chunks so that any
    drift (a proxy settling after its start, say) touches every VIP alike."""
    port = str(SERVICE_PORT)
    for vip in vips:
        tcpbench(lab, lab.client_ns, "latency", vip, port, "20", cpu=0)  # ARP, caches
    samples: list[list[float]] = [[] for _ in vips]
    chunks = 3
    for _ in range(chunks):
        for vip, taken in zip(vips, samples, strict=True):
            out = tcpbench(lab, lab.client_ns, "latency", vip, port, str(count // chunks), cpu=0)
            taken += [float(x) for x in out.split()]
    results = []
    for vip, taken in zip(vips, samples, strict=True):
        good = [s for s in taken if s >= 0]
        if not good:
            raise RuntimeError(f"no connection to {vip} succeeded")
        results.append({**percentiles(good), "failed": float(len(taken) - len(good))})
    return results


def connections_per_second(lab: Lab, vip: str, seconds: float) -> float:
    ok, _failed = tcpbench(
        lab, lab.client_ns, "rate", vip, str(SERVICE_PORT), str(seconds), "2"
    ).split()
    return int(ok) / seconds


def _listen(ports: list[int]) -> list[socket.socket]:
    listeners = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(4096)
        sock.setblocking(False)
        listeners.append(sock)
    return listeners


RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with an RST, no TIME_WAIT


class FirstAccept:
    """Listeners on backend 3 for the changed endpoint's ports: when each first accepts."""

    def __init__(self, lab: Lab, ports: list[int]) -> None:
        self.ports = ports
        with NetnsThread(lab.backend_ns(3)) as inside:
            self.listeners = inside.call(_listen, self.ports)
        self.first: dict[int, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        by_fd = {s.fileno(): (port, s) for port, s in zip(self.ports, self.listeners, strict=True)}
        while not self._stop:
            readable, _, _ = select.select(list(by_fd), [], [], 0.05)
            for fd in readable:
                port, sock = by_fd[fd]
                # Drain the backlog: a full one drops SYNs, and a client whose SYN was
                # dropped waits a second to retry, which would be timed as programming.
                while True:
                    try:
                        connection, _ = sock.accept()
                    except BlockingIOError:
                        break
                    self.first.setdefault(port, time.monotonic())
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                    connection.close()

    def wait(self, port: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while port not in self.first and time.monotonic() < deadline:
            time.sleep(0.0002)
        return self.first.get(port)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for sock in self.listeners:
            sock.close()


def endpoint_changes_ms(
    lab: Lab, cluster: Cluster, competitor: Competitor, count: int
) -> tuple[list[float], list[float]]:
    """One endpoint change at a time, each timed from its start to the first connection
    the new endpoint accepts, while a client keeps connecting to the service."""
    cluster.port_base += MAX_CHANGES
    probe = FirstAccept(lab, [cluster.port_base + k for k in range(count)])
    traffic = lab.start_process(
        "change-traffic",
        netns.exec_command(
            lab.client_ns,
            [
                str(lab.dir / "tcpbench"),
                "rate",
                service_vip(cluster.last),
                str(SERVICE_PORT),
                "600",  # seconds: longer than any series, which stops it when done
                "1",  # client thread
                str(CHANGE_TRAFFIC_PAUSE_US),
            ],
        ),
    )
    samples, applied = [], []
    try:
        for number in range(count):
            started = time.monotonic()
            competitor.change(number)
            applied.append((time.monotonic() - started) * 1000)
            accepted = probe.wait(cluster.port_base + number, timeout=60)
            if accepted is None:
                raise RuntimeError(f"change {number}: the new endpoint got no connection in 60 s")
            if accepted < started:  # a measuring error, never a result
                raise RuntimeError(f"change {number}: the new endpoint was reached before it")
            samples.append((accepted - started) * 1000)
    finally:
        traffic.terminate()
        traffic.wait(10)
        probe.close()
    return samples, applied


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def measure(
    lab: Lab, cluster: Cluster, competitor: Competitor, size: int, settings: RunSettings
) -> dict[str, Any]:
    """Every measure of one mode at one N. A measure that fails is retried once, then
    recorded under "errors" and the run goes on: one bad minute should not cost the rest."""
    # A clean conntrack table: no mode inherits the NAT bindings of the one before.
    netns.run(netns.exec_command(lab.node_ns, ["conntrack", "-F"]), check=False)
    result: dict[str, Any] = dict(competitor.load())
    errors: dict[str, str] = {}

    def attempt(name: str, take: Callable[[], Any]) -> None:
        for tries_left in (1, 0):
            try:
                value = take()
                if value is not None:
                    result[name] = value
                return
            except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
                if not tries_left:
                    errors[name] = str(exc)[:300]
                    print(f"  {name} failed: {errors[name]}", file=sys.stderr, flush=True)
                time.sleep(1)

    def changes() -> None:
        changed, applied = endpoint_changes_ms(lab, cluster, competitor, settings.changes)
        result["change_call_ms"] = {**percentiles(applied), "samples": applied}
        result["change_ms"] = {**percentiles(changed), "samples": changed}

    def latencies() -> None:
        # The client, and the proxy if there is one, on CPU 0. On this VM a wake-up
        # across CPUs costs 10-40 us, and where the scheduler puts them changes from one
        # run to the next: unpinned, that drowns whatever N does.
        vips = [service_vip(0), service_vip(cluster.last)]
        with pinned(getattr(competitor, "process", None), {0}):
            first, last = connect_latencies_us(lab, vips, settings.connects)
        result["connect_first_us"], result["connect_last_us"] = first, last

    def iperf_udp() -> float:
        pps = udp_small(lab, settings.seconds, vip=IPERF_VIP, port=IPERF_PORT)["delivered_pps"]
        return pps / 1000

    try:
        attempt("memory_mb", competitor.memory_mb)
        attempt("connect", latencies)
        attempt(
            "connections_per_second",
            lambda: connections_per_second(lab, service_vip(0), settings.seconds),
        )
        if size == THROUGHPUT_SIZE:
            attempt(
                "tcp_gbits",
                lambda: tcp_gbits(lab, settings.seconds, 1, vip=IPERF_VIP, port=IPERF_PORT),
            )
            time.sleep(0.5)  # iperf3's server ends one test before it takes the next
            attempt("udp_kpps", iperf_udp)
        attempt("changes", changes)
    finally:
        competitor.unload()
    if errors:
        result["errors"] = errors
    return result
