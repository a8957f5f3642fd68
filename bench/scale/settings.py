"""What a scale run covers: sizes, modes, addresses and ports, and how the command line's
options resolve into one run's settings."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from nfqproxy import defaults

SIZES = (100, 1000, 10000)
FULL_SIZES = (*SIZES, 30000)
QUICK_SIZES = (100, 1000)
ENDPOINTS = 3
QUEUES = os.cpu_count() or 1  # offload-nq's queues: one per CPU


@dataclass(frozen=True)
class ProxyMode:
    """An nfqproxy mode: its data path, extra flags of `nfqproxy run`, --min-sync-period."""

    datapath: str
    flags: tuple[str, ...] = ()
    min_sync_period: float = 0.0


# nfqproxy at its default --min-sync-period: the runner holds a change that follows a sync
# by less than that, so these modes time only the programming measures.
SYNC = f"-sync-{defaults.MIN_SYNC_PERIOD:g}s"
NFQPROXY_MODES = {
    "fast": ProxyMode("fast"),
    "offload-1q": ProxyMode("offload", ("--queues", "1")),
    "offload-nq": ProxyMode("offload", ("--queues", str(QUEUES))),
    f"fast{SYNC}": ProxyMode("fast", (), defaults.MIN_SYNC_PERIOD),
    f"offload-1q{SYNC}": ProxyMode("offload", ("--queues", "1"), defaults.MIN_SYNC_PERIOD),
    "reference": ProxyMode("reference"),
}
KERNEL_MODES = ("iptables-legacy", "iptables-nft", "nftables")
# The floor of a first-packet design: the iptables layout plus an NFQUEUE round trip per
# connection, answered without a decision (bench/nfq_ceiling.c). Its packet measures only:
# its rules change as iptables-legacy's do.
FLOOR_MODE = "queue-floor"
FLOOR_QUEUE = 100  # its queue numbers, FLOOR_QUEUE onwards: none nfqproxy uses
CHANGE_MEASURES = ("change_ms", "change_call_ms")
# Measures a mode leaves out (besides the programming-only modes' packet measures).
SKIPPED_MEASURES = {FLOOR_MODE: CHANGE_MEASURES}
MODES = (*KERNEL_MODES, FLOOR_MODE, *NFQPROXY_MODES)
# The reference path is the readable specification, slow by design: only when asked for.
DEFAULT_MODES = tuple(m for m in MODES if m != "reference")
PROGRAMMING_ONLY = tuple(m for m, p in NFQPROXY_MODES.items() if p.min_sync_period)
REFERENCE_MAX = 1000  # the reference path is the readable specification, not a contender
THROUGHPUT_SIZE = 1000
SERVICE_PORT, SERVE_PORT, CHANGE_PORT = 80, 9000, 9100
MAX_CHANGES = 100  # per series; series take successive port ranges from CHANGE_PORT
# The client that finds the new endpoint: one connection per ~250 µs, so a third of them
# reach it about 1 ms after it is programmed, without saturating either competitor.
CHANGE_TRAFFIC_PAUSE_US = 200
IPERF_VIP, EMPTY_VIP, IPERF_PORT = "10.99.0.1", "10.99.0.2", 5201
# Every service is a NodePort, svc-i on NODEPORT_BASE + i: 10,000 services need more than
# the default range (30000-32767) holds, so the run's cluster uses
# --service-node-port-range 20000-29999, as a kube-apiserver can be told. Beyond
# NODEPORT_MAX services, none has a NodePort and the NodePort measures are left out.
NODEPORT_BASE, NODEPORT_MAX = 20000, 10000
NAMESPACE = "scale"
LAB_PREFIX = "scale"
# Modes that a machine may not take: nftables needs nft, and a kernel that takes
# kube-proxy's verdict maps and numgen; offload needs an nfqproxy that has that data path.
# A run leaves them out and says why, rather than fail.
OPTIONAL_MODES = ("nftables", *(m for m in NFQPROXY_MODES if m.startswith("offload")))
TITLES = {
    "iptables-legacy": "kube-proxy iptables layout, legacy back end (iptables-restore)",
    "iptables-nft": "kube-proxy iptables layout, nft back end (iptables-restore)",
    "nftables": "kube-proxy nftables layout (nft -f)",
    FLOOR_MODE: "first-packet floor: the iptables layout (legacy) plus each connection's "
    f"first packet through NFQUEUE ({QUEUES} queue(s), CPU fan-out), accepted undecided by "
    "bench/nfq_ceiling.c (packet measures only)",
    **{
        m: f"nfqproxy --datapath {p.datapath} {' '.join(p.flags)} "
        f"--min-sync-period {p.min_sync_period:g}".replace("  ", " ")
        + (" (the default; programming measures only)" if p.min_sync_period else "")
        for m, p in NFQPROXY_MODES.items()
    },
}


def modes_at(size: int, sizes: list[int]) -> list[str]:
    """The modes that run at N = size, where the machine takes them all: the reference up
    to REFERENCE_MAX, nfqproxy at its default --min-sync-period at the run's largest N only
    (a change there takes up to that period, so a series is slow)."""
    return [
        m
        for m in MODES
        if (m != "reference" or size <= REFERENCE_MAX)
        and (m not in PROGRAMMING_ONLY or size == max(sizes))
    ]


@dataclass(frozen=True)
class RunSettings:
    """One run's settings, from the command line's options and their defaults."""

    sizes: list[int]
    modes: tuple[str, ...]  # the modes asked for, in MODES order; a lab runs those it can
    rounds: int
    changes: int  # endpoint changes timed per mode, N and round
    connects: int  # connect() times taken per service, mode, N and round
    seconds: float  # how long each rate and throughput measure runs (iperf3: whole s)
    throughput_size: int  # the N at which TCP throughput and small UDP are measured
    command: str  # the run's command as results.json and the report name it


def resolve(args: argparse.Namespace) -> RunSettings:
    asked = args.modes or DEFAULT_MODES
    sizes = args.sizes or list(QUICK_SIZES if args.quick else FULL_SIZES if args.full else SIZES)
    words = ["python -m bench"] + [f"--{o}" for o in ("quick", "full") if getattr(args, o)]
    for option in ("rounds", "changes", "seconds"):
        if getattr(args, option) is not None:
            words.append(f"--{option} {getattr(args, option):g}")
    for option in ("sizes", "modes"):
        if getattr(args, option):
            words.append(f"--{option} " + " ".join(str(v) for v in getattr(args, option)))
    return RunSettings(
        sizes=sorted(sizes),
        modes=tuple(m for m in MODES if m in asked),
        rounds=args.rounds or (1 if args.quick else 5),
        changes=min(args.changes or (5 if args.quick else 20), MAX_CHANGES),
        connects=100 if args.quick else 300,
        seconds=args.seconds or (1.0 if args.quick else 2.0),
        throughput_size=THROUGHPUT_SIZE if THROUGHPUT_SIZE in sizes else max(sizes),
        command=" ".join(words),
    )
