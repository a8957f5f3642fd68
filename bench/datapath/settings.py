"""What a data-path run covers: the modes, the measures, the addresses, and how the command
line's options resolve into one run's settings."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from nfqproxy_lab.benchkit import datapath_unavailable

VIP, PORT = "10.96.0.50", 5201  # the iperf3 service, TCP and UDP
VIP6 = "fd00:96::50"  # its IPv6 ClusterIP, in the dual-stack lab of the -v6 modes
REQUEST_PORT = 9000  # the same VIP's port for short connections (tcpbench serve)
QUEUE = 100  # the first NFQUEUE queue of every mode that uses one
QUEUES = os.cpu_count() or 1  # offload-nq's queues: one per CPU, as nfqproxy's default
LAB_PREFIX = "bench"

MODES = (
    "kernel",
    "nftables",
    "ceiling",
    "ceiling-copy",
    "fast",
    "fast-traced",
    "offload-1q",
    "offload-nq",
    "reference",
    "kernel-v6",
    "reference-v6",
    "fast-v6",
    "offload-v6",
)
# IPv6 through the same service (its second ClusterIP) in a dual-stack lab: asked for,
# with their IPv4 modes beside them for the ratio to each family's kernel DNAT.
V6_MODES = ("kernel-v6", "reference-v6", "fast-v6", "offload-v6")
# Asked for only: the reference path (the readable specification, slow by design), IPv6,
# and the fast path with `nfqproxy trace` recording every decision (what tracing costs).
DEFAULT_MODES = tuple(
    m for m in MODES if m not in ("reference", "fast-traced") and m not in V6_MODES
)
TRACED_MODES = ("fast-traced",)
KERNEL_MODES = ("kernel", "nftables", "ceiling", "ceiling-copy", "kernel-v6")
# nfqproxy's modes: the data path and the extra flags of `nfqproxy run`.
NFQPROXY_MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fast": ("fast", ()),
    "fast-traced": ("fast", ()),
    "offload-1q": ("offload", ("--queues", "1")),
    "offload-nq": ("offload", ("--queues", str(QUEUES))),
    "reference": ("reference", ()),
    "reference-v6": ("reference", ()),
    "fast-v6": ("fast", ()),
    "offload-v6": ("offload", ("--queues", str(QUEUES))),
}
# Modes a machine may not take: they are left out of a run, with the reason, not failed.
OPTIONAL_MODES = ("nftables", "offload-1q", "offload-nq", "offload-v6")

MODE_TITLES = {
    "kernel": "kernel DNAT, kube-proxy's iptables layout",
    "nftables": "kernel DNAT, kube-proxy's nftables layout",
    "ceiling": "NFQUEUE ceiling (C accept-all, F_GSO, batch verdicts, 128-byte copy)",
    "ceiling-copy": "NFQUEUE rewriting ceiling (whole packets out and back)",
    "fast": "nfqproxy fast",
    "fast-traced": "nfqproxy fast, with `nfqproxy trace -o json` writing every decision",
    "offload-1q": "nfqproxy offload, 1 queue",
    "offload-nq": f"nfqproxy offload, {QUEUES} queues",
    "reference": "nfqproxy reference",
    "kernel-v6": "IPv6: kernel DNAT, kube-proxy's iptables layout (ip6tables)",
    "reference-v6": "IPv6: nfqproxy reference",
    "fast-v6": "IPv6: nfqproxy fast",
    "offload-v6": f"IPv6: nfqproxy offload, {QUEUES} queues",
}

# key: (title, unit, scale for display, how it is measured)
MEASURES: dict[str, tuple[str, str, float, str]] = {
    "tcp1": ("TCP, 1 stream", "Gbit/s", 1.0, "iperf3 -P 1, client -> VIP -> backend"),
    "tcp4": ("TCP, 4 streams", "Gbit/s", 1.0, "iperf3 -P 4"),
    "udp_pps": (
        "UDP 64 B delivered",
        "kpps",
        1e-3,
        "iperf3 -u -l 64 -b 0: datagrams received per second",
    ),
    "udp_loss": ("UDP 64 B loss", "%", 1.0, "the same run's lost datagrams"),
    "cps": (
        "new connections per second",
        "k/s",
        1e-3,
        "tcpbench requests: 4 client threads of connect, a 32-byte request, its answer, "
        "close with RST; source ports 1024-65535 taken in turn (no 5-tuple reused)",
    ),
    "rss_mb": ("memory (RSS)", "MB", 1.0, "nfqproxy's VmRSS after the measures"),
    "ready_seconds": (
        "start to ready",
        "s",
        1.0,
        "nfqproxy: process start to tables programmed and hooks in place",
    ),
}


def unavailable_reason(mode: str) -> str | None:
    """Why this installation cannot run an nfqproxy mode, or None. (nftables is checked in
    a lab, where its layout is loaded.)"""
    if mode == "offload-nq" and QUEUES < 2:
        return "one CPU: offload-nq would be offload-1q"
    return datapath_unavailable(NFQPROXY_MODES[mode][0]) if mode in NFQPROXY_MODES else None


@dataclass(frozen=True)
class Settings:
    modes: tuple[str, ...]  # asked for, in MODES order
    rounds: int
    seconds: float  # each measure's length (iperf3: whole seconds, at least 1)
    flows: int  # flows for the fast table's RSS probe
    command: str


def resolve(args: argparse.Namespace) -> Settings:
    asked = args.modes or DEFAULT_MODES
    words = ["python -m bench.datapath"]
    if args.quick:
        words.append("--quick")
    for option in ("rounds", "seconds", "flows"):
        if getattr(args, option) is not None:
            words.append(f"--{option} {getattr(args, option):g}")
    if args.modes:
        words.append("--modes " + " ".join(args.modes))
    return Settings(
        modes=tuple(m for m in MODES if m in asked),
        rounds=args.rounds or (1 if args.quick else 5),
        seconds=args.seconds or (1.0 if args.quick else 3.0),
        flows=args.flows or (100_000 if args.quick else 1_000_000),
        command=" ".join(words),
    )
