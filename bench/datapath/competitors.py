"""One mode in a fresh lab (client -> node -> backend 1, iperf3 and tcpbench serving), and
every measure of it: throughput, small UDP, new connections with what the queue decided,
and nfqproxy's memory."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.datapath.settings import (
    NFQPROXY_MODES,
    PORT,
    QUEUE,
    REQUEST_PORT,
    TRACED_MODES,
    V6_MODES,
    VIP,
    VIP6,
    Settings,
)
from bench.traffic import (
    build_nfq_ceiling,
    build_tcpbench,
    rss_mb,
    short_connections,
    tcp_gbits,
    udp_small,
    widen_client_ports,
)
from nfqproxy_lab import netns
from nfqproxy_lab.benchkit import wait_for_line
from nfqproxy_lab.dualstack import backend_ip6
from nfqproxy_lab.kube_proxy_rules import (
    KubeService,
    nft_layout_refused,
    nft_restore_all,
    restore_all,
)
from nfqproxy_lab.proxy import proxy_command, read_status, start_proxy, wait_ready
from nfqproxy_lab.topology import NODE_NAME, Lab, all_labs, backend_ip

BENCH_DIR = Path(__file__).resolve().parents[1]


class ModeUnavailable(Exception):
    """This machine cannot run the mode; the message says why."""


@dataclass(frozen=True)
class Binaries:
    ceiling: Path
    tcpbench: Path


def build_binaries(out_dir: Path) -> Binaries:
    return Binaries(
        build_nfq_ceiling(out_dir.resolve() / "nfq_ceiling"),
        build_tcpbench(out_dir.resolve() / "tcpbench"),
    )


def bench_manifest(dual_stack: bool = False) -> str:
    """The iperf service and its slice; dual-stack, a second ClusterIP and an IPv6 slice."""
    ports = (
        f"  - {{name: tcp, protocol: TCP, port: {PORT}}}\n"
        f"  - {{name: udp, protocol: UDP, port: {PORT}}}\n"
        f"  - {{name: requests, protocol: TCP, port: {REQUEST_PORT}}}\n"
    )
    return f"""apiVersion: v1
kind: Service
metadata: {{name: iperf, namespace: bench}}
spec:
  clusterIP: {VIP}
  clusterIPs: [{VIP}{f", '{VIP6}'" if dual_stack else ""}]
  ports:
{ports}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: iperf-1
  namespace: bench
  labels: {{kubernetes.io/service-name: iperf}}
addressType: IPv4
ports:
{ports.replace("  - ", "- ")}endpoints:
- addresses: [{backend_ip(1)}]
  nodeName: {NODE_NAME}
""" + (_v6_slice(ports) if dual_stack else "")


def _v6_slice(ports: str) -> str:
    return f"""---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: iperf-1-v6
  namespace: bench
  labels: {{kubernetes.io/service-name: iperf}}
addressType: IPv6
ports:
{ports.replace("  - ", "- ")}endpoints:
- addresses: ['{backend_ip6(1)}']
  nodeName: {NODE_NAME}
"""


def kube_services(family: int = 4) -> list[KubeService]:
    """The one service's ports as kube-proxy's rule layouts take them, in one family."""
    ports = [("tcp", "tcp", PORT), ("udp", "udp", PORT), ("requests", "tcp", REQUEST_PORT)]
    vip, backend = (VIP, backend_ip(1)) if family == 4 else (VIP6, backend_ip6(1))
    return [
        KubeService(f"bench/iperf:{name}", vip, port, protocol, ((backend, port),))
        for name, protocol, port in ports
    ]


@dataclass
class Running:
    lab: Lab
    process: subprocess.Popen[bytes] | None = None  # nfqproxy, in its modes
    ready_seconds: float | None = None
    vip: str = VIP  # the address the client measures through


def _queue_to_ceiling(lab: Lab, mode: str, ceiling: Path) -> None:
    """Every packet to the VIP, and every reply of its connections, through the ceiling."""
    queue = ["-j", "NFQUEUE", "--queue-num", str(QUEUE)]
    replies = ["-m", "conntrack", "--ctorigdst", VIP, "--ctdir", "REPLY", *queue]
    for rule in (
        ["-t", "raw", "-A", "PREROUTING", "-d", VIP, *queue],
        ["-t", "mangle", "-A", "POSTROUTING", *replies],
    ):
        netns.run(netns.exec_command(lab.node_ns, ["iptables", *rule]))
    copy = ["copy"] if mode == "ceiling-copy" else []
    command = netns.exec_command(lab.node_ns, [str(ceiling), str(QUEUE), *copy])
    process = lab.start_process("ceiling", command)
    wait_for_line(lab.dir / "ceiling.log", "ready", process)


def _trace_everything(lab: Lab) -> None:
    """`nfqproxy trace -o json` in the node, its lines to trace.log, until the lab goes
    down; waits until the proxy traces for it (its status counts one tracer)."""
    command = [*proxy_command(), "trace", "--socket", str(lab.control_socket), "-o", "json"]
    lab.start_process("trace", netns.exec_command(lab.node_ns, command))
    deadline = time.monotonic() + 10
    while read_status(lab).get("tracers") != 1:
        if time.monotonic() > deadline:
            raise RuntimeError("nfqproxy trace did not start within 10 s")
        time.sleep(0.1)


@contextmanager
def competitor(mode: str, binaries: Binaries, name: str) -> Iterator[Running]:
    """A fresh lab with VIP served by the given mode. Raises ModeUnavailable (the lab
    taken down) when the machine cannot run it."""
    if name in all_labs():
        Lab.load(name).down()  # left by a benchmark that was killed
    ipv6 = mode in V6_MODES
    lab = Lab(name, 1, dual_stack=ipv6)
    try:
        lab.up()
        widen_client_ports(lab)
        (lab.manifests_dir / "iperf.yaml").write_text(bench_manifest(dual_stack=ipv6))
        serve = {
            "iperf3": ["iperf3", "-s", "-p", str(PORT)],
            "tcpbench": [str(binaries.tcpbench), "serve", str(REQUEST_PORT)],
        }
        for key, command in serve.items():
            lab.start_process(key, netns.exec_command(lab.backend_ns(1), command))
        in_node = ["ip", "netns", "exec", lab.node_ns]
        running = Running(lab, vip=VIP6 if ipv6 else VIP)
        if mode == "kernel-v6":
            netns.run(
                [*in_node, "ip6tables-restore", "--noflush"], stdin=restore_all(kube_services(6))
            )
        if mode in ("kernel", "ceiling", "ceiling-copy"):
            netns.run(
                [*in_node, "iptables-restore", "--noflush"], stdin=restore_all(kube_services())
            )
        if mode == "nftables":
            refused = nft_layout_refused(lab.node_ns)
            if refused:
                raise ModeUnavailable(refused)
            netns.run([*in_node, "nft", "-f", "-"], stdin=nft_restore_all(kube_services()))
        if mode in ("ceiling", "ceiling-copy"):
            _queue_to_ceiling(lab, mode, binaries.ceiling)
        if mode in NFQPROXY_MODES:
            datapath, flags = NFQPROXY_MODES[mode]
            started = time.monotonic()
            running.process = start_proxy(
                lab, "--datapath", datapath, "--queue-num", str(QUEUE), *flags
            )
            wait_ready(lab, running.process, timeout=60)
            running.ready_seconds = time.monotonic() - started
            if mode in TRACED_MODES:
                _trace_everything(lab)
        time.sleep(0.3)  # let the servers bind
        yield running
    finally:
        lab.down()


def measure(running: Running, settings: Settings, binaries: Binaries) -> dict[str, Any]:
    """Every measure of one mode in one round. A measure that fails is retried once, then
    recorded under "errors", and the run goes on: one bad minute should not cost the rest."""
    lab, seconds = running.lab, settings.seconds
    result: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def attempt(name: str, take: Callable[[], None]) -> None:
        for tries_left in (1, 0):
            try:
                take()
                return
            except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
                if not tries_left:
                    errors[name] = str(exc)[:300]
                    print(f"  {name} failed: {errors[name]}", file=sys.stderr, flush=True)
                time.sleep(1)

    def tcp(streams: int) -> Callable[[], None]:
        def take() -> None:
            result[f"tcp{streams}"] = tcp_gbits(lab, seconds, streams, vip=running.vip, port=PORT)

        return take

    def udp() -> None:
        small = udp_small(lab, seconds, vip=running.vip, port=PORT)
        result["udp_pps"], result["udp_loss"] = small["delivered_pps"], small["loss_percent"]

    def connections() -> None:
        proxied = running.process is not None
        made = short_connections(
            lab, binaries.tcpbench, running.vip, REQUEST_PORT, seconds, proxied
        )
        result["cps"], result["connections"] = made["per_second"], made

    attempt("tcp1", tcp(1))
    attempt("tcp4", tcp(4))
    attempt("udp", udp)
    attempt("connections", connections)
    if running.process is not None:
        pid = running.process.pid
        result["ready_seconds"] = running.ready_seconds

        def memory() -> None:
            result["rss_mb"] = rss_mb(pid)

        attempt("rss_mb", memory)
    if errors:
        result["errors"] = errors
    return result
