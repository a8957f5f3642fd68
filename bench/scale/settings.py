"""What a scale run covers: sizes, modes, addresses and ports, and how the command line's
options resolve into one run's settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

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
# Modes that a machine may not take: nftables needs nft, and a kernel that takes
# kube-proxy's verdict maps and numgen. A run leaves them out and says so, rather than fail.
OPTIONAL_MODES = ("nftables",)


def modes_at(size: int) -> list[str]:
    """The modes that run at N = size, where the machine takes them all."""
    return [m for m in MODES if m != "reference" or size <= REFERENCE_MAX]


@dataclass(frozen=True)
class RunSettings:
    """One run's settings, from the command line's options and their defaults."""

    sizes: list[int]
    modes: tuple[str, ...]  # the modes asked for, in MODES order; a lab runs those it can
    rounds: int
    changes: int  # endpoint changes timed per mode, N and round
    connects: int  # connect() times taken per service, mode, N and round
    seconds: float  # how long each rate and throughput measure runs
    command: str  # the run's command as results.json and the report name it


def resolve(args: argparse.Namespace) -> RunSettings:
    asked = args.modes or MODES
    return RunSettings(
        sizes=args.sizes or list(QUICK_SIZES if args.quick else FULL_SIZES if args.full else SIZES),
        modes=tuple(m for m in MODES if m in asked),
        rounds=args.rounds or (1 if args.quick else 2),
        changes=min(args.changes or (5 if args.quick else 20), MAX_CHANGES),
        connects=100 if args.quick else 300,
        seconds=1.0 if args.quick else 2.0,
        command="python -m bench" + (" --quick" if args.quick else " --full" if args.full else ""),
    )
