"""Every measure of one competitor at one N: connect latency at the first, middle and last
service, new connections per second, throughput, memory, and endpoint changes timed by the
traffic that finds them; for nfqproxy, what its queue decided while connections were made."""

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
    PROGRAMMING_ONLY,
    SERVICE_PORT,
    SKIPPED_MEASURES,
    RunSettings,
)
from bench.traffic import counting_decisions, short_connections, tcp_gbits, tcpbench, udp_small
from nfqproxy_lab import netns
from nfqproxy_lab.netns import NetnsThread
from nfqproxy_lab.topology import NODE_IP, Lab

POSITIONS = ("first", "middle", "last")  # of the services in iptables order


@contextmanager
def pinned(processes: list[subprocess.Popen[bytes]], cpus: set[int]) -> Iterator[None]:
    """Every thread of the processes on cpus, for the duration; then each back on the CPUs
    it had (a data path that pins its queue threads to CPUs keeps them)."""
    before: dict[int, set[int]] = {}
    for process in processes:
        for tid in (int(t) for t in os.listdir(f"/proc/{process.pid}/task")):
            with suppress(ProcessLookupError):
                before[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpus)
    try:
        yield
    finally:
        for tid, allowed in before.items():
            with suppress(ProcessLookupError):
                os.sched_setaffinity(tid, allowed)


def connect_latencies_us(
    lab: Lab, targets: list[tuple[str, int]], count: int, namespace: str | None = None
) -> tuple[list[dict[str, float]], int]:
    """connect() percentiles for each (address, port), from the lab's client or the given
    namespace, measured in alternating chunks so that any drift (a proxy settling after
    its start, say) touches every target alike; and how many connections were made,
    warm-ups included."""
    binary, client = lab.dir / "tcpbench", namespace or lab.client_ns
    made = 0
    for host, port in targets:
        out = tcpbench(binary, client, "latency", host, str(port), "20", cpu=0)  # ARP, caches
        made += len(out.split())
    samples: list[list[float]] = [[] for _ in targets]
    chunks = 3
    for _ in range(chunks):
        for (host, port), taken in zip(targets, samples, strict=True):
            out = tcpbench(binary, client, "latency", host, str(port), str(count // chunks), cpu=0)
            taken += [float(x) for x in out.split()]
    results = []
    for (host, port), taken in zip(targets, samples, strict=True):
        made += len(taken)
        good = [s for s in taken if s >= 0]
        if not good:
            raise RuntimeError(f"no connection to {host}:{port} succeeded")
        results.append({**percentiles(good), "failed": float(len(taken) - len(good))})
    return results, made


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
    lab: Lab, cluster: Cluster, competitor: Competitor, mode: str, size: int, settings: RunSettings
) -> dict[str, Any]:
    """Every measure of one mode at one N. A measure that fails is retried once, then
    recorded under "errors" and the run goes on: one bad minute should not cost the rest.
    nfqproxy at its default --min-sync-period takes the programming measures only: its
    packet path is the one measured at --min-sync-period 0."""
    # A clean conntrack table: no mode inherits the NAT bindings of the one before.
    netns.run(netns.exec_command(lab.node_ns, ["conntrack", "-F"]), check=False)
    result: dict[str, Any] = dict(competitor.load())
    errors: dict[str, str] = {}
    process = getattr(competitor, "process", None)  # nfqproxy's, where there is one
    proxied = process is not None
    # The processes that answer the queue, nfqproxy's or the floor's: pinned with the client.
    answering = [process] if process is not None else getattr(competitor, "processes", [])

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
        indexes = (0, cluster.middle, cluster.last)
        targets = [(service_vip(i), SERVICE_PORT) for i in indexes]
        with pinned(answering, {0}), counting_decisions(lab, proxied) as decided:
            found, made = connect_latencies_us(lab, targets, settings.connects)
        for position, cell in zip(POSITIONS, found, strict=True):
            result[f"connect_{position}_us"] = cell
        result["connect_decisions"] = {"made": made, **decided}

    def nodeport_latencies() -> None:
        # From the external client, outside the cluster, to the node's address: the same
        # three services' NodePorts (kube-proxy's iptables mode reaches KUBE-NODEPORTS after
        # every ClusterIP rule of KUBE-SERVICES, then walks it in order).
        targets = [(NODE_IP, cluster.node_port(i)) for i in (0, cluster.middle, cluster.last)]
        with pinned(answering, {0}), counting_decisions(lab, proxied) as decided:
            found, made = connect_latencies_us(lab, targets, settings.connects, lab.external_ns)
        for position, cell in zip(POSITIONS, found, strict=True):
            result[f"nodeport_{position}_us"] = cell
        result["nodeport_decisions"] = {"made": made, **decided}

    def connections() -> None:
        binary = lab.dir / "tcpbench"
        taken = short_connections(
            lab, binary, service_vip(0), SERVICE_PORT, settings.seconds, proxied
        )
        result["connections_per_second"] = taken["per_second"]
        result["connection_decisions"] = {k: v for k, v in taken.items() if k != "per_second"}

    def iperf_udp() -> float:
        pps = udp_small(lab, settings.seconds, vip=IPERF_VIP, port=IPERF_PORT)["delivered_pps"]
        return pps / 1000

    try:
        attempt("memory_mb", competitor.memory_mb)
        if mode not in PROGRAMMING_ONLY:
            attempt("connect", latencies)
            if cluster.has_node_ports:
                attempt("nodeport", nodeport_latencies)
            attempt("connections", connections)
            if size == settings.throughput_size:
                attempt(
                    "tcp_gbits",
                    lambda: tcp_gbits(lab, settings.seconds, 1, vip=IPERF_VIP, port=IPERF_PORT),
                )
                time.sleep(0.5)  # iperf3's server ends one test before it takes the next
                attempt("udp_kpps", iperf_udp)
        if "change_ms" not in SKIPPED_MEASURES.get(mode, ()):
            attempt("changes", changes)
    finally:
        competitor.unload()
    if errors:
        result["errors"] = errors
    return result
