"""Floods for the lab: an iperf3 service on backend 1, and iperf3 clients that saturate
the proxy's queue, for tests of how the proxy behaves under load."""

from __future__ import annotations

import subprocess
import time
from typing import Any, Literal

import yaml

from nfqproxy.files import atomic_write
from nfqproxy_lab import netns
from nfqproxy_lab.topology import NODE_NAME, Lab, backend_ip

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


def start_flood(lab: Lab, kind: FloodKind, seconds: int) -> subprocess.Popen[bytes]:
    """An iperf3 client in the client namespace, through the VIP; the lab stops it."""
    command = ["iperf3", "-c", IPERF_VIP, "-p", str(IPERF_PORT), "-t", str(seconds)]
    return lab.start_process(
        f"flood-{kind}", netns.exec_command(lab.client_ns, [*command, *FLOOD_OPTIONS[kind]])
    )


def queue_counters(lab: Lab, queue_num: int = 100) -> tuple[int, int]:
    """(packets queued so far, packets the kernel dropped) for one queue of the node, from
    /proc/net/netfilter/nfnetlink_queue: its id sequence, and its full plus
    undeliverable drops."""
    table = netns.run(
        netns.exec_command(lab.node_ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"])
    )
    for line in table.splitlines():
        fields = line.split()
        if fields and int(fields[0]) == queue_num:
            return int(fields[7]), int(fields[5]) + int(fields[6])
    return 0, 0


def queue_rate(lab: Lab, seconds: float = 1.0, queue_num: int = 100) -> tuple[float, float]:
    """(packets per second through the queue, dropped per second) over a short window."""
    packets, drops = queue_counters(lab, queue_num)
    time.sleep(seconds)
    packets_after, drops_after = queue_counters(lab, queue_num)
    return (packets_after - packets) / seconds, (drops_after - drops) / seconds
