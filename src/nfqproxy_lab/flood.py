"""Floods for the lab: an iperf3 service on backend 1, and iperf3 clients that saturate
the proxy's queue, for tests of how the proxy behaves under load."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any, Literal, cast

import dpkt
import yaml

from nfqproxy.files import atomic_write
from nfqproxy_lab import netns
from nfqproxy_lab.packets import tcp_packet, udp_packet
from nfqproxy_lab.topology import CLIENT_IP, NODE_NAME, Lab, backend_ip

IPERF_VIP, IPERF_PORT = "10.96.0.30", 5201
FloodKind = Literal["tcp", "udp"]
# TCP: 4 streams of bulk data; UDP: 64-byte datagrams as fast as iperf3 can send them.
FLOOD_OPTIONS: dict[FloodKind, list[str]] = {
    "tcp": ["-P", "4"],
    "udp": ["-u", "-l", "64", "-b", "0"],
}


def iperf_objects() -> list[dict[str, Any]]:
    """The iperf Service (TCP and UDP on one port) and its slice: backend 1."""
    ports = [{"name": p.lower(), "protocol": p, "port": IPERF_PORT} for p in ("TCP", "UDP")]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "iperf", "namespace": "default"},
            "spec": {"clusterIP": IPERF_VIP, "clusterIPs": [IPERF_VIP], "ports": ports},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "iperf-1",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "iperf"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [backend_ip(1)], "nodeName": NODE_NAME}],
            "ports": ports,
        },
    ]


def serve_iperf(lab: Lab) -> None:
    """Adds the iperf service to the lab's manifests and starts its server on backend 1."""
    atomic_write(lab.manifests_dir / "iperf.yaml", yaml.safe_dump_all(iperf_objects()))
    lab.start_process(
        "iperf3-server",
        netns.exec_command(lab.backend_ns(1), ["iperf3", "-s", "-p", str(IPERF_PORT)]),
    )


NEW_FLOW_RATE = 20_000  # first packets per second: below conntrack's early-drop churn


def start_flood(
    lab: Lab, kind: FloodKind, seconds: int, new_flows: bool = False, cpu: int | None = None
) -> subprocess.Popen[bytes]:
    """A flood from the client namespace through the VIP; the lab stops it. By default an
    iperf3 client (every packet of a few flows); new_flows: a stream of first packets (SYNs
    or datagrams, each from a new source port), what reaches a proxy that sees only those.
    cpu: the one CPU the flood runs on, as a pod limited to one core would."""
    if new_flows:
        command = [sys.executable, "-m", "nfqproxy_lab.flood", kind, str(seconds)]
    else:
        command = ["iperf3", "-c", IPERF_VIP, "-p", str(IPERF_PORT), "-t", str(seconds)]
        command += FLOOD_OPTIONS[kind]
    command = netns.exec_command(lab.client_ns, command)
    if cpu is not None:
        command = ["taskset", "--cpu-list", str(cpu), *command]
    return lab.start_process(f"flood-{kind}", command)


def new_flow_flood(kind: FloodKind, seconds: float, rate: int = NEW_FLOW_RATE) -> None:
    """First packets to the iperf VIP from the client's /24, each 5-tuple new (runs in
    the client namespace)."""
    prefix = CLIENT_IP.rsplit(".", 1)[0]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    started, i = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        source, port = f"{prefix}.{10 + i % 240}", 1024 + (i // 240) % 60000
        if kind == "tcp":
            packet = tcp_packet(source, port, IPERF_VIP, IPERF_PORT, dpkt.tcp.TH_SYN)
        else:
            packet = udp_packet(source, port, IPERF_VIP, IPERF_PORT, b"x" * 64)
        sock.sendto(packet, (IPERF_VIP, 0))
        i += 1
        ahead = i / rate - (time.monotonic() - started)
        if ahead > 0.001:
            time.sleep(ahead)


def queue_counters(lab: Lab) -> tuple[int, int]:
    """(packets queued so far, packets the kernel dropped) over every queue of the node
    (the proxy's, one or several), from /proc/net/netfilter/nfnetlink_queue: the id
    sequences, and the full plus undeliverable drops."""
    table = netns.run(
        netns.exec_command(lab.node_ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"])
    )
    packets = drops = 0
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 8:
            packets += int(fields[7])
            drops += int(fields[5]) + int(fields[6])
    return packets, drops


def queue_rate(lab: Lab, seconds: float = 1.0) -> tuple[float, float]:
    """(packets per second through the queues, dropped per second) over a short window."""
    packets, drops = queue_counters(lab)
    time.sleep(seconds)
    packets_after, drops_after = queue_counters(lab)
    return (packets_after - packets) / seconds, (drops_after - drops) / seconds


if __name__ == "__main__":  # `python -m nfqproxy_lab.flood tcp|udp SECONDS`: start_flood's
    new_flow_flood(cast(FloodKind, sys.argv[1]), float(sys.argv[2]))
