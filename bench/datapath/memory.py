"""Memory per tracked flow of every data path this nfqproxy has, and the Maglev build time:
measured in this process's children, no lab needed."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nfqproxy.datapath import factory

# The data path built through the factory, as the proxy builds it, with room for the flows;
# then one first packet per flow, each from another client address and port. A small one is
# built and fed first, so that the modules it imports and the objects they create once are
# not counted as the flows' cost (a path whose flows conntrack keeps would show only those).
RSS_PROBE = """
from ipaddress import IPv4Network, IPv6Network, ip_address
from nfqproxy.datapath import factory
from nfqproxy.model import Backend, ServicePort, Snapshot
from nfqproxy_lab.packets import tcp_packet, tcp6_packet

IPV6 = {ipv6!r}

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def filled(capacity, flows):
    ranges = (IPv4Network("10.96.0.0/12"), IPv6Network("fd00:96::/108"))[: 2 if IPV6 else 1]
    settings = factory.DatapathSettings(ranges, flow_capacity=capacity)
    dp = factory.build_datapath({name!r}, settings)
    vip = ip_address("fd00:96::10" if IPV6 else "10.96.0.10")
    prefix = "fd00:244:11::" if IPV6 else "10.244.11."
    backends = tuple(Backend(ip_address(f"{{prefix}}{{i}}"), 80) for i in range(2, 5))
    dp.apply(Snapshot({{(vip, "TCP", 80): ServicePort("b/s:p", vip, "TCP", 80, backends)}}))
    if IPV6:  # the client's address at 8-24, its port at 40
        template = bytearray(tcp6_packet("fd00:1::1", 1, str(vip), 80))
        address, port = slice(20, 24), slice(40, 42)
    else:
        template = bytearray(tcp_packet("10.0.0.1", 1, str(vip), 80))
        address, port = slice(12, 16), slice(20, 22)
    for i in range(flows):
        template[address] = (0x0A000000 + (i >> 16)).to_bytes(4, "big")
        template[port] = (i & 0xFFFF).to_bytes(2, "big")
        verdict = dp.process(bytes(template))
    assert verdict.reason == "new_flow", verdict
    return dp

warm = filled(16, 16)
flows = {flows}
before = rss()
dp = filled(flows, flows)
print((rss() - before) / flows)
"""
REFERENCE_FLOWS = 200_000  # the reference's dicts fill slowly: enough to read its cost


def bytes_per_flow(datapath: str, flows: int, ipv6: bool = False) -> float:
    code = RSS_PROBE.format(flows=flows, name=datapath, ipv6=ipv6)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr else "failed")
    return float(result.stdout.strip())


def bytes_per_flow_all(flows: int) -> dict[str, float | str]:
    """Every data path this installation runs: RSS growth per flow, or why it failed; for
    those that serve IPv6, per IPv6 flow too (as "<name> IPv6")."""
    found: dict[str, float | str] = {}
    for name in factory.available():
        count = min(flows, REFERENCE_FLOWS) if name == "reference" else flows
        for ipv6 in (False, True) if 6 in factory.DATAPATHS[name].families else (False,):
            key = f"{name} IPv6" if ipv6 else name
            try:
                found[key] = bytes_per_flow(name, count, ipv6)
            except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                found[key] = f"failed: {exc}"[:300]
    return found


def conntrack_entry_bytes(slabinfo: Path = Path("/proc/slabinfo")) -> int | None:
    """What one conntrack entry takes in the kernel (the nf_conntrack slab's object size):
    the cost per flow of every path conntrack tracks, kernel DNAT and offload included,
    which no RSS shows. None where the slab statistics cannot be read."""
    try:
        for line in slabinfo.read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == "nf_conntrack":
                return int(fields[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def maglev_build_ms(compiled: bool, repeats: int) -> list[float]:
    from nfqproxy.datapath import maglev

    names = [f"10.1.{i // 250}.{i % 250}:80" for i in range(100)]
    build: Callable[..., object] = maglev.build_table if compiled else maglev.build_table_reference
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        build(names, 65537, 0)
        samples.append((time.perf_counter() - started) * 1000)
    return samples
