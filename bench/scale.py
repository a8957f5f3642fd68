"""nfqproxy against kube-proxy's iptables mode as the cluster grows.

    python -m bench [--quick | --full] [--rounds R] [--changes K] [--out results]

For each N in {100, 1000, 10000} (--full adds 30000; --quick runs 100 and 1000), a fresh
namespace lab gets N ClusterIP services of 3 endpoints each, plus an iperf3 service and
one service without endpoints. Each mode programs them in turn, in one run, round after
round:
- iptables-legacy, iptables-nft: kube-proxy's exact iptables layout
  (src/nfqproxy_lab/kube_proxy_rules.py), loaded with iptables-restore on that back end;
- fast: nfqproxy --datapath fast, following the in-process API server (watch events);
- reference: nfqproxy --datapath reference, for N <= 1000 only.

Measures, for each mode and N (all traffic inside the lab: client -> node -> backends):
- connect latency: TCP connect() times, p50 and p99, to the first and to the last
  service in iptables order (the last is iptables' worst case), by bench/tcpbench.c;
- new connections per second: 2 client threads of connect and close;
- at N = 1000, TCP throughput (iperf3, 1 stream) and 64-byte UDP delivered rate;
- programming: a full load of the N services; and one endpoint change, measured by
  traffic: from the change (the API update, or iptables-restore's start) to the first
  connection accepted by the new endpoint, while a client keeps connecting (about
  4,000 connections a second, well below what any mode carries);
- memory: the proxy's RSS, or for iptables the kernel's Slab + VmallocUsed growth.

Results go to results/<time>-scale/: results.json, report.md, and PNG plots.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Protocol, TextIO

from bench.datapath import tcp_gbits, udp_small
from nfqproxy_lab import netns
from nfqproxy_lab.kube_proxy_rules import (
    NFT_DELETE,
    RESTORE_EMPTY,
    KubeService,
    nft_restore_all,
    nft_restore_change,
    restore_all,
    restore_change,
)
from nfqproxy_lab.netns import NetnsThread
from nfqproxy_lab.proxy import start_proxy, wait_ready
from nfqproxy_lab.served_api import ServedApi
from nfqproxy_lab.topology import Lab, all_labs, backend_ip

SIZES = (100, 1000, 10000)
FULL_SIZES = (*SIZES, 30000)
QUICK_SIZES = (100, 1000)
ENDPOINTS = 3
MODES = ("iptables-legacy", "iptables-nft", "nftables", "fast", "reference")
REFERENCE_MAX = 1000  # the reference path is the readable specification, not a contender
THROUGHPUT_SIZE = 1000
SERVICE_PORT, SERVE_PORT, CHANGE_PORT = 80, 9000, 9100
MAX_CHANGES = 100  # per series; series take successive port ranges from CHANGE_PORT
# The client that finds the new endpoint: one connection per ~250 µs, so a third of them
# reach it about 1 ms after it is programmed, without saturating either competitor.
CHANGE_TRAFFIC_PAUSE_US = 200
IPERF_VIP, EMPTY_VIP, IPERF_PORT = "10.99.0.1", "10.99.0.2", 5201
NAMESPACE = "scale"
LAB_PREFIX = "scale"
BENCH_DIR = Path(__file__).resolve().parent


def service_vip(index: int) -> str:
    return str(IPv4Address(int(IPv4Address("10.100.0.0")) + index + 1))


def unused_endpoint(index: int, endpoint: int) -> str:
    """Endpoints of the services no traffic is sent to: addresses nothing answers."""
    return str(IPv4Address(int(IPv4Address("10.128.0.0")) + index * 4 + endpoint + 1))


# --- the cluster: the same services as Kubernetes objects and as kube-proxy rules -------


@dataclass
class Cluster:
    """N services; the first and the last have the lab's real backends, and the last
    one's third endpoint (a slice of its own, as a different port needs) is the one
    that changes."""

    size: int
    change: int | None = None  # the change applied last: endpoint 3 on port_base + change
    # Each series of changes gets ports of its own. A connection reset by the server keeps
    # its conntrack entry, NAT binding included, and a client port reused later follows
    # it: ports shared between series would be reached before their change.
    port_base: int = CHANGE_PORT

    @property
    def last(self) -> int:
        return self.size - 1

    def endpoints(self, index: int) -> list[tuple[str, int]]:
        if index in (0, self.last):
            third = SERVE_PORT if self.change is None or index != self.last else self.port()
            return [
                (backend_ip(1), SERVE_PORT),
                (backend_ip(2), SERVE_PORT),
                (backend_ip(3), third),
            ]
        return [(unused_endpoint(index, e), SERVE_PORT) for e in range(ENDPOINTS)]

    def port(self) -> int:
        return self.port_base + (self.change or 0)

    def kube_services(self) -> list[KubeService]:
        """In iptables order: the iperf3 and empty services first, then svc-0 .. svc-N-1."""
        extras = [
            KubeService(
                f"{NAMESPACE}/iperf:{p}", IPERF_VIP, IPERF_PORT, p, ((backend_ip(1), IPERF_PORT),)
            )
            for p in ("tcp", "udp")
        ]
        extras.append(KubeService(f"{NAMESPACE}/empty:http", EMPTY_VIP, SERVICE_PORT, "tcp", ()))
        return extras + [
            KubeService(
                f"{NAMESPACE}/svc-{i}:http",
                service_vip(i),
                SERVICE_PORT,
                "tcp",
                tuple(self.endpoints(i)),
            )
            for i in range(self.size)
        ]

    def service_objects(self) -> list[dict[str, Any]]:
        def service(name: str, vip: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"clusterIP": vip, "clusterIPs": [vip], "ports": ports},
            }

        http = [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT}]
        iperf = [{"name": p.lower(), "protocol": p, "port": IPERF_PORT} for p in ("TCP", "UDP")]
        return [
            service("iperf", IPERF_VIP, iperf),
            service("empty", EMPTY_VIP, http),
            *(service(f"svc-{i}", service_vip(i), http) for i in range(self.size)),
        ]

    def slice_objects(self) -> list[dict[str, Any]]:
        slices = [
            slice_object(
                "iperf",
                "iperf-a",
                [backend_ip(1)],
                [("tcp", "TCP", IPERF_PORT), ("udp", "UDP", IPERF_PORT)],
            )
        ]
        for i in range(self.size):
            addresses = [ip for ip, _ in self.endpoints(i)]
            if i == self.last:
                slices.append(
                    slice_object(
                        f"svc-{i}", f"svc-{i}-a", addresses[:2], [("http", "TCP", SERVE_PORT)]
                    )
                )
                slices.append(self.changing_slice())
            else:
                slices.append(
                    slice_object(f"svc-{i}", f"svc-{i}-a", addresses, [("http", "TCP", SERVE_PORT)])
                )
        return slices

    def changing_slice(self) -> dict[str, Any]:
        ip, port = self.endpoints(self.last)[2]
        return slice_object(f"svc-{self.last}", f"svc-{self.last}-b", [ip], [("http", "TCP", port)])


def slice_object(
    service: str, name: str, addresses: list[str], ports: list[tuple[str, str, int]]
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
        "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports],
    }


# --- the competitors ----------------------------------------------------------------------


class Competitor(Protocol):
    def load(self) -> dict[str, float]: ...
    def change(self, number: int) -> None: ...
    def memory_mb(self) -> float: ...
    def unload(self) -> None: ...


def kernel_memory_bytes() -> int:
    """Slab and vmalloc: where iptables (legacy: vmalloc'd blobs) and nftables keep rules."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields.get("Slab", 0) + fields.get("VmallocUsed", 0)


class KubeProxyRules:
    """kube-proxy's rules in the kernel: loaded whole, then changed by partial
    transactions, as kube-proxy does. Subclasses name the tool and the rule texts."""

    command: tuple[str, ...]
    change_flags: tuple[str, ...] = ()
    remove_all: str

    def __init__(self, lab: Lab, cluster: Cluster) -> None:
        self.lab, self.cluster = lab, cluster
        self._memory = 0.0

    def render_all(self, services: list[KubeService]) -> str:
        raise NotImplementedError

    def render_change(self, services: list[KubeService], old: KubeService, new: KubeService) -> str:
        raise NotImplementedError

    def _run(self, text: str, *flags: str) -> None:
        netns.run(netns.exec_command(self.lab.node_ns, [*self.command, *flags]), stdin=text)

    def load(self) -> dict[str, float]:
        text = self.render_all(self.cluster.kube_services())
        before = kernel_memory_bytes()
        started = time.monotonic()
        self._run(text)
        seconds = time.monotonic() - started
        self._memory = (kernel_memory_bytes() - before) / 2**20
        return {"load_seconds": seconds, "ready_seconds": seconds}

    def change(self, number: int) -> None:
        old = self.cluster.kube_services()[-1]
        self.cluster.change = number
        services = self.cluster.kube_services()
        self._run(self.render_change(services, old, services[-1]), *self.change_flags)

    def memory_mb(self) -> float:
        return self._memory

    def unload(self) -> None:
        self._run(self.remove_all)
        self.cluster.change = None


class KubeProxyIptables(KubeProxyRules):
    """The iptables layout through iptables-restore; changes with --noflush."""

    change_flags = ("--noflush",)
    remove_all = RESTORE_EMPTY

    def __init__(self, lab: Lab, cluster: Cluster, backend: str) -> None:
        super().__init__(lab, cluster)
        self.command = (f"iptables-{backend}-restore",)

    def render_all(self, services: list[KubeService]) -> str:
        return restore_all(services)

    def render_change(self, services: list[KubeService], old: KubeService, new: KubeService) -> str:
        return restore_change(services, old, new)


class KubeProxyNftables(KubeProxyRules):
    """kube-proxy's nftables mode layout, loaded and changed with `nft -f` transactions."""

    command = ("nft", "-f", "-")
    remove_all = NFT_DELETE

    def render_all(self, services: list[KubeService]) -> str:
        return nft_restore_all(services)

    def render_change(self, services: list[KubeService], old: KubeService, new: KubeService) -> str:
        return nft_restore_change(old, new)


def nftables_supported(lab: Lab) -> bool:
    """Whether nft is installed and this kernel takes kube-proxy's constructs (a
    concatenated verdict map and numgen), checked in the lab's node namespace."""
    if shutil.which("nft") is None:
        return False
    probe = (
        "add table ip nfqproxy-probe\n"
        "add chain ip nfqproxy-probe c\n"
        "add map ip nfqproxy-probe m { type ipv4_addr . inet_proto . inet_service : verdict; }\n"
        "add rule ip nfqproxy-probe c ip daddr . meta l4proto . th dport vmap @m\n"
        "add rule ip nfqproxy-probe c numgen random mod 2 vmap { 0 : accept, 1 : accept }\n"
    )
    try:
        netns.run(netns.exec_command(lab.node_ns, ["nft", "-c", "-f", "-"]), stdin=probe)
    except (netns.CommandError, OSError):
        return False
    return True


class Nfqproxy:
    def __init__(self, lab: Lab, cluster: Cluster, api: ServedApi, datapath: str) -> None:
        self.lab, self.cluster, self.api, self.datapath = lab, cluster, api, datapath
        self.process: subprocess.Popen[bytes] | None = None

    def load(self) -> dict[str, float]:
        started = time.monotonic()
        self.process = start_proxy(
            self.lab, "--datapath", self.datapath, "--min-sync-period", "0", api_server=self.api.url
        )
        status = wait_ready(self.lab, self.process, timeout=300)
        return {
            "load_seconds": float(status["last_sync_seconds"]),
            "ready_seconds": time.monotonic() - started,
        }

    def change(self, number: int) -> None:
        self.cluster.change = number
        self.api.call(self.api.server.update("endpointslices", self.cluster.changing_slice()))

    def memory_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def unload(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None
        if self.cluster.change is not None:
            self.cluster.change = None
            self.api.call(self.api.server.update("endpointslices", self.cluster.changing_slice()))


# --- measuring ----------------------------------------------------------------------------


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
                "600",
                "1",
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
    lab: Lab, cluster: Cluster, competitor: Competitor, size: int, settings: argparse.Namespace
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


# --- the lab ------------------------------------------------------------------------------


def build_tcpbench(out: Path) -> None:
    netns.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(out), str(BENCH_DIR / "tcpbench.c")])


LOCK_FILE = Path("/run/nfqproxy/scale-bench.lock")


def take_lock() -> TextIO:
    """One run at a time: a second would take the first's labs for leftovers. The lock
    goes with the process, however it ends."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    handle = LOCK_FILE.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another scale benchmark is running (it holds {LOCK_FILE})") from None
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def clean_leftovers() -> list[str]:
    """Labs and namespaces a killed run of this benchmark left behind, removed. Only
    called with the lock held, so no live run owns them."""
    found = []
    for name in all_labs():
        if name.startswith(LAB_PREFIX):
            Lab.load(name).down()
            found.append(f"lab {name}")
    for name in netns.names():
        if name.startswith(LAB_PREFIX):
            netns.delete(name)
            found.append(f"namespace {name}")
    return found


@contextmanager
def scale_lab(size: int, name: str) -> Iterator[tuple[Lab, ServedApi, Cluster]]:
    lab = Lab(name, 3)
    api: ServedApi | None = None
    try:
        lab.up()
        build_tcpbench(lab.dir / "tcpbench")
        for i in (1, 2, 3):
            serve = [str(lab.dir / "tcpbench"), "serve", str(SERVE_PORT)]
            lab.start_process(f"tcpbench{i}", netns.exec_command(lab.backend_ns(i), serve))
        lab.start_process(
            "iperf3", netns.exec_command(lab.backend_ns(1), ["iperf3", "-s", "-p", str(IPERF_PORT)])
        )
        cluster = Cluster(size)
        api = ServedApi(lab.node_ns, bookmark_interval=30)
        for obj in cluster.service_objects():
            api.call(api.server.create("services", obj))
        for obj in cluster.slice_objects():
            api.call(api.server.create("endpointslices", obj))
        time.sleep(0.3)  # the servers bind
        yield lab, api, cluster
    finally:
        lab.down()
        if api is not None:
            api.close()


def competitors(size: int, lab: Lab) -> list[str]:
    modes = [m for m in MODES if m != "reference" or size <= REFERENCE_MAX]
    if not nftables_supported(lab):
        print(
            "nftables mode left out: nft is missing or this kernel refuses its layout", flush=True
        )
        modes.remove("nftables")
    return modes


def make_competitor(mode: str, lab: Lab, api: ServedApi, cluster: Cluster) -> Competitor:
    if mode == "nftables":
        return KubeProxyNftables(lab, cluster)
    if mode.startswith("iptables-"):
        return KubeProxyIptables(lab, cluster, mode.removeprefix("iptables-"))
    return Nfqproxy(lab, cluster, api, mode)


# --- results ------------------------------------------------------------------------------


def spread(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


MEASURES: dict[str, tuple[str, str]] = {
    # key: (title, how it was measured)
    "connect_first_us.p50": (
        "connect p50 to the first service (µs)",
        "tcpbench latency: sequential TCP connect() times from the client namespace, after 20 warm-up connects, in 3 chunks alternating between the first and the last service; the client, and nfqproxy, on CPU 0",
    ),
    "connect_last_us.p50": (
        "connect p50 to the last service (µs)",
        "as above, to the last service in iptables order: iptables' worst case",
    ),
    "connect_first_us.p99": ("connect p99 to the first service (µs)", "as above, 99th percentile"),
    "connect_last_us.p99": ("connect p99 to the last service (µs)", "as above, 99th percentile"),
    "connections_per_second": (
        "new TCP connections per second",
        "tcpbench rate: 2 client threads of connect() then close with RST, to the first service",
    ),
    "load_seconds": (
        "full load of N services (s)",
        "iptables: the iptables-restore of the whole layout; nfqproxy: its first sync (objects to programmed tables), as it reports it",
    ),
    "ready_seconds": (
        "start to ready (s)",
        "iptables: the same restore; nfqproxy: process start, list from the API, first sync and hooks",
    ),
    "change_ms.p50": (
        "one endpoint change, p50 (ms)",
        "from the change (the API update, or the start of iptables-restore --noflush of kube-proxy's partial sync) to the first connection the new endpoint accepts, while a client keeps connecting (one thread, a 200 µs pause between connections)",
    ),
    "change_call_ms.p50": (
        "one endpoint change, the change call alone, p50 (ms)",
        "iptables: iptables-restore --noflush of the partial sync; nfqproxy: the API server recording the update",
    ),
    "change_ms.p99": ("one endpoint change, p99 (ms)", "as above, 99th percentile of the changes"),
    "memory_mb": (
        "memory (MB)",
        "nfqproxy: the proxy's RSS once loaded; iptables: the kernel's Slab + VmallocUsed growth across the load (noisy)",
    ),
    "tcp_gbits": (
        "TCP throughput at N = 1000 (Gbit/s)",
        "iperf3, 1 stream, client -> VIP -> backend 1",
    ),
    "udp_kpps": (
        "64-byte UDP delivered at N = 1000 (kpps)",
        "iperf3 -u -l 64 -b 0, datagrams received per second",
    ),
}


def value(run: dict[str, Any], key: str) -> float | None:
    node: Any = run
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """measure -> mode -> N -> median/min/max over rounds."""
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for key in MEASURES:
        for mode in MODES:
            for size in sorted({r["size"] for r in runs}):
                samples = [
                    v
                    for r in runs
                    if r["mode"] == mode and r["size"] == size and (v := value(r, key)) is not None
                ]
                if samples:
                    table.setdefault(key, {}).setdefault(mode, {})[str(size)] = spread(samples)
    return table


def targets(summary: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    def median(key: str, mode: str, size: int) -> float | None:
        cell = summary.get(key, {}).get(mode, {}).get(str(size))
        return None if cell is None else float(cell["median"])

    big, small = max(sizes), min(sizes)
    fast_p50 = median("connect_last_us.p50", "fast", big)
    iptables_p50 = min(
        (
            v
            for m in ("iptables-legacy", "iptables-nft")
            if (v := median("connect_last_us.p50", m, big)) is not None
        ),
        default=None,
    )
    last_small, last_big = (
        median("connect_last_us.p50", "fast", small),
        median("connect_last_us.p50", "fast", big),
    )
    growth = None if last_small is None or last_big is None else (last_big / last_small - 1) * 100
    change_p99 = median("change_ms.p99", "fast", big)
    load = median("load_seconds", "fast", big)
    rows = [
        (
            "connect p50 to the last service, nfqproxy fast vs iptables mode's best back end",
            f"N = {big}",
            "≤ iptables'",
            fast_p50,
            iptables_p50,
            fast_p50 is not None and iptables_p50 is not None and fast_p50 <= iptables_p50,
        ),
        (
            f"growth of nfqproxy fast's connect p50 (last service) from N = {small} to N = {big}",
            "",
            "≤ 10%",
            growth,
            10.0,
            growth is not None and growth <= 10,
        ),
        (
            "one-endpoint-change programming p99, nfqproxy fast",
            f"N = {big}",
            "≤ 10 ms",
            change_p99,
            10.0,
            change_p99 is not None and change_p99 <= 10,
        ),
        (
            "full load, nfqproxy fast",
            f"N = {big}",
            "≤ 1 s",
            load,
            1.0,
            load is not None and load <= 1.0,
        ),
    ]
    return [
        {"measure": m, "at": at, "target": t, "value": v, "bound": b, "met": bool(met)}
        for m, at, t, v, b, met in rows
    ]


def report_markdown(results: dict[str, Any]) -> str:
    sizes = [str(s) for s in results["sizes"]]
    lines = [
        f"# nfqproxy against kube-proxy's iptables mode, N services × {ENDPOINTS} endpoints",
        "",
        f"Command: `{results['command']}`, started {results['started']}, kernel {results['machine']}, "
        f"{results['rounds']} round(s), modes interleaved within each N. Cells: median over rounds "
        "[min–max]; latency and change cells are themselves percentiles within each run.",
        "",
        "## Targets (issue 5)",
        "",
        "| measure | at | target | measured | met |",
        "|---|---|---|---|---|",
    ]
    for row in results["targets"]:
        measured = "n/a" if row["value"] is None else f"{row['value']:.3g}"
        lines.append(
            f"| {row['measure']} | {row['at']} | {row['target']} | {measured} (bound {row['bound']:.3g}) | {'yes' if row['met'] else '**no**'} |"
        )
    for key, (title, how) in MEASURES.items():
        cells = results["summary"].get(key)
        if not cells:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            f"How: {how}.",
            "",
            "| mode | " + " | ".join(f"N = {s}" for s in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        for mode in MODES:
            row = cells.get(mode, {})
            lines.append(f"| {mode} | " + " | ".join(_cell(row.get(s)) for s in sizes) + " |")
    failures = [
        f"- round {r['round'] + 1}, N = {r['size']}, {r['mode']}: {name}: {message}"
        for r in results["runs"]
        for name, message in r.get("errors", {}).items()
    ]
    if failures:
        lines += ["", "## Measures that failed (after one retry)", "", *failures]
    lines += ["", "Plots: latency.png, programming.png, throughput.png.", ""]
    return "\n".join(lines)


def _cell(cell: dict[str, float] | None) -> str:
    if cell is None:
        return "–"
    return f"{cell['median']:.3g} [{cell['min']:.3g}–{cell['max']:.3g}]"


def plot(results: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]

    def series(key: str, mode: str) -> tuple[list[int], list[float]]:
        cells = summary.get(key, {}).get(mode, {})
        sizes = sorted(int(s) for s in cells)
        return sizes, [cells[str(s)]["median"] for s in sizes]

    for name, panels in (
        (
            "latency",
            [
                ("connect_last_us.p50", "connect p50, last service (µs)"),
                ("connect_first_us.p50", "connect p50, first service (µs)"),
            ],
        ),
        (
            "programming",
            [("load_seconds", "full load (s)"), ("change_ms.p99", "one endpoint change p99 (ms)")],
        ),
    ):
        fig, axes = plt.subplots(1, len(panels), figsize=(11, 4))
        for axis, (key, label) in zip(axes, panels, strict=True):
            for mode in MODES:
                xs, ys = series(key, mode)
                if xs:
                    axis.plot(xs, ys, marker="o", label=mode)
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel("services (N)")
            axis.set_ylabel(label)
            axis.legend()
        fig.suptitle(f"nfqproxy vs kube-proxy iptables mode: {name} vs N")
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=100)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (key, label) in zip(
        axes, [("tcp_gbits", "TCP Gbit/s"), ("udp_kpps", "UDP 64 B kpps")], strict=True
    ):
        modes = [m for m in MODES if str(THROUGHPUT_SIZE) in summary.get(key, {}).get(m, {})]
        axis.bar(modes, [summary[key][m][str(THROUGHPUT_SIZE)]["median"] for m in modes])
        axis.set_ylabel(label)
        axis.tick_params(axis="x", rotation=20)
    fig.suptitle(f"throughput at N = {THROUGHPUT_SIZE}")
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=100)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def run_all(args: argparse.Namespace, sizes: list[int]) -> list[dict[str, Any]]:
    """Every N, each in a fresh lab, with the modes interleaved; what was measured
    before an interruption is kept."""
    runs: list[dict[str, Any]] = []
    try:
        for round_number in range(args.rounds):
            for size in sizes:
                name = f"{LAB_PREFIX}{round_number % 10}{sizes.index(size)}"
                with scale_lab(size, name) as (lab, api, cluster):
                    modes = [m for m in competitors(size, lab) if m in (args.modes or MODES)]
                    shift = round_number % len(modes)  # each round starts with another mode
                    for mode in modes[shift:] + modes[:shift]:
                        print(
                            f"round {round_number + 1}/{args.rounds}, N = {size}: {mode}",
                            flush=True,
                        )
                        competitor = make_competitor(mode, lab, api, cluster)
                        run = measure(lab, cluster, competitor, size, args)
                        runs.append({"round": round_number, "size": size, "mode": mode, **run})
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: the labs are down; writing what was measured", file=sys.stderr)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="N = 100 and 1000, one round, short measures (≤ 2 min)"
    )
    parser.add_argument("--full", action="store_true", help="adds N = 30000")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--changes", type=int, default=None, help="endpoint changes per run (20)")
    parser.add_argument("--sizes", type=int, nargs="+", help="N values instead of the default")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="modes instead of all")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("iperf3") is None or shutil.which("gcc") is None:
        print(
            "the benchmark needs root, iperf3 and gcc (make install provides them)", file=sys.stderr
        )
        return 2
    sizes = args.sizes or list(QUICK_SIZES if args.quick else FULL_SIZES if args.full else SIZES)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.changes = min(args.changes or (5 if args.quick else 20), MAX_CHANGES)
    args.connects = 100 if args.quick else 300
    args.seconds = 1.0 if args.quick else 2.0
    try:
        lock = take_lock()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    started = datetime.now(UTC)
    try:
        for leftover in clean_leftovers():
            print(f"removed a leftover of an interrupted run: {leftover}", flush=True)
        runs = run_all(args, sizes)
    finally:
        # Unlinked while still held: a run that opened it meanwhile fails its
        # non-blocking lock and stops, as it would have anyway.
        LOCK_FILE.unlink(missing_ok=True)
        lock.close()
    if not runs:
        return 1
    summary = summarise(runs)
    command = "python -m bench" + (" --quick" if args.quick else " --full" if args.full else "")
    results = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "machine": os.uname().release,
        "sizes": sorted({r["size"] for r in runs}),
        "modes": [m for m in MODES if any(r["mode"] == m for r in runs)],
        "rounds": args.rounds,
        "changes": args.changes,
        "measures": {k: {"title": t, "how": h} for k, (t, h) in MEASURES.items()},
        "runs": runs,
        "summary": summary,
        "targets": targets(summary, sorted({r["size"] for r in runs})),
    }
    out_dir = args.out / started.strftime("%Y%m%dT%H%M%SZ-scale")
    out_dir.mkdir(parents=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(report_markdown(results))
    plot(results, out_dir)
    print((out_dir / "report.md").read_text())
    print(f"results in {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
