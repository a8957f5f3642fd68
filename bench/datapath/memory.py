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
from ipaddress import IPv4Network, ip_address
from nfqproxy.datapath import factory
from nfqproxy.model import Backend, ServicePort, Snapshot
from nfqproxy_lab.packets import tcp_packet

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def filled(capacity, flows):
    settings = factory.DatapathSettings((IPv4Network("10.96.0.0/12"),), flow_capacity=capacity)
    dp = factory.build_datapath({name!r}, settings)
    vip = ip_address("10.96.0.10")
    backends = tuple(Backend(ip_address(f"10.244.11.{{i}}"), 80) for i in range(2, 5))
    dp.apply(Snapshot({{(vip, "TCP", 80): ServicePort("b/s:p", vip, "TCP", 80, backends)}}))
    template = bytearray(tcp_packet("10.0.0.1", 1, "10.96.0.10", 80))
    for i in range(flows):
        template[12:16] = (0x0A000000 + (i >> 16)).to_bytes(4, "big")
        template[20:22] = (i & 0xFFFF).to_bytes(2, "big")
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


def bytes_per_flow(datapath: str, flows: int) -> float:
    code = RSS_PROBE.format(flows=flows, name=datapath)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr else "failed")
    return float(result.stdout.strip())


def bytes_per_flow_all(flows: int) -> dict[str, float | str]:
    """Every data path this installation runs: RSS growth per flow, or why it failed."""
    found: dict[str, float | str] = {}
    for name in factory.available():
        count = min(flows, REFERENCE_FLOWS) if name == "reference" else flows
        try:
            found[name] = bytes_per_flow(name, count)
        except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
            found[name] = f"failed: {exc}"[:300]
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
