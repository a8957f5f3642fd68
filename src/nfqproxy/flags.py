"""The values `nfqproxy run` takes, read as kube-proxy reads its own: CIDRs, durations as
Go writes them (`30s`, `1m30s`, `500ms`), counts that must be positive. Each raises
argparse.ArgumentTypeError with the value and the reason, which the CLI and the config
file (config_file.py) both report."""

from __future__ import annotations

import argparse
import re
from ipaddress import IPv6Network, ip_network

from nfqproxy.datapath.marks import MarkLayout, parse_mask
from nfqproxy.model import IPNetwork

V4_MAPPED = IPv6Network("::ffff:0:0/96")
# Go's time.ParseDuration units, in seconds; a duration is one or more number-unit pairs.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def network(text: str) -> IPNetwork:
    """A CIDR of either family; ValueError for a zone or the IPv4-mapped range."""
    if "%" in text:  # an IPv6 zone: any text, which str() keeps
        raise ValueError("an IPv6 zone (%...) is not allowed")
    parsed = ip_network(text, strict=True)
    if parsed.version == 6 and parsed.overlaps(V4_MAPPED):
        # Never on the wire (RFC 4291 2.5.5.2), and where the compiled core keeps IPv4.
        raise ValueError(f"it overlaps the IPv4-mapped range {V4_MAPPED}")
    return parsed


def cidr(text: str) -> IPNetwork:
    try:
        return network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def service_cidrs(text: str) -> tuple[IPNetwork, ...]:
    """kube-apiserver's --service-cluster-ip-range: one range, or an IPv4 and an IPv6 one
    separated by a comma (either order). The flag repeats for more ranges, as a cluster
    with extra ServiceCIDR objects has."""
    networks: list[IPNetwork] = []
    for part in text.split(","):
        try:
            networks.append(network(part.strip()))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: {exc}") from None
    return tuple(networks)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def duration(text: str) -> float:
    """Seconds, from a Go duration (`30s`, `1m30s`, `250ms`) or a plain number of seconds.
    Negative durations are refused: a period or a timeout cannot be."""
    value = text.strip()
    if value.startswith("-"):
        raise argparse.ArgumentTypeError(f"expected a duration of 0 or more, got {text!r}")
    try:
        seconds = float(value)
    except ValueError:
        position, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            position = match.end()
        if not value or position != len(value):
            raise argparse.ArgumentTypeError(
                f"expected a duration such as 30s, 1m or 250ms, got {text!r}"
            ) from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a duration of 0 or more, got {text!r}")
    return seconds


def mark_layout(text: str) -> MarkLayout:
    try:
        return parse_mask(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def queue_num(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"--queue-num must be 0-65535, got {text!r}")
    return int(text)
