"""The traffic both benchmarks make and how they count it: iperf3 throughput and small UDP,
bench/tcpbench.c (built with gcc) for connects and short connections, and the packets the
proxy's queue decided meanwhile, read from its status file."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nfqproxy.datapath.verdicts import Action, verdict_counter
from nfqproxy_lab import netns
from nfqproxy_lab.proxy import read_status
from nfqproxy_lab.topology import Lab

TCPBENCH_SOURCE = Path(__file__).resolve().parent / "tcpbench.c"
CEILING_SOURCE = Path(__file__).resolve().parent / "nfq_ceiling.c"
# Client threads of the new-connections measure: several, so that the client is not what
# limits the rate, on a machine of 2 cores as on a bigger one.
CONNECTION_THREADS = 4
# The client's source ports: the whole unprivileged range, so that a run of short
# connections reuses as few 5-tuples as it can (tcpbench counts those it reuses).
CLIENT_PORTS = "1024 65535"
NEW_FLOW_COUNTER = verdict_counter(Action.ACCEPT, "new_flow")


def build_tcpbench(out: Path) -> Path:
    netns.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(out), str(TCPBENCH_SOURCE)])
    return out


def build_nfq_ceiling(out: Path) -> Path:
    """bench/nfq_ceiling.c: the cheapest NFQUEUE answer, accept without a decision."""
    source = str(CEILING_SOURCE)
    netns.run(["gcc", "-O2", "-Wall", "-o", str(out), source, "-lnetfilter_queue", "-lmnl"])
    return out


def tcpbench(
    binary: Path, namespace: str, *args: str, timeout: float = 120, cpu: int | None = None
) -> str:
    pinned = [] if cpu is None else ["taskset", "-c", str(cpu)]
    result = subprocess.run(
        netns.exec_command(namespace, [*pinned, str(binary), *args]),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout


def widen_client_ports(lab: Lab) -> None:
    netns.sysctl(lab.client_ns, "net.ipv4.ip_local_port_range", CLIENT_PORTS)


# --- iperf3 -------------------------------------------------------------------------------


def iperf_seconds(seconds: float) -> int:
    """iperf3 takes whole seconds (-t 0 would mean forever): at least 1."""
    return max(1, round(seconds))


def iperf(lab: Lab, seconds: float, *extra: str, vip: str, port: int) -> dict[str, Any]:
    duration = iperf_seconds(seconds)
    command = ["iperf3", "-c", vip, "-p", str(port), "-t", str(duration), "-J", *extra]
    result = subprocess.run(
        netns.exec_command(lab.client_ns, command),
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    )
    report: dict[str, Any] = json.loads(result.stdout or "{}")
    if "error" in report or result.returncode != 0:
        raise RuntimeError(
            f"iperf3 {' '.join(extra)}: {report.get('error', result.stderr.strip())}"
        )
    return report


def tcp_gbits(lab: Lab, seconds: float, streams: int, vip: str, port: int) -> float:
    report = iperf(lab, seconds, "-P", str(streams), vip=vip, port=port)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9


def udp_small(lab: Lab, seconds: float, vip: str, port: int) -> dict[str, float]:
    report = iperf(lab, seconds, "-u", "-l", "64", "-b", "0", vip=vip, port=port)
    total = report["end"]["sum"]
    packets, lost = float(total.get("packets", 0)), float(total.get("lost_packets", 0))
    return {
        "delivered_pps": (packets - lost) / float(total["seconds"]),
        "loss_percent": float(total.get("lost_percent", 0.0)),
    }


# --- what the proxy decided ---------------------------------------------------------------


def status_written_after(lab: Lab, moment: float, timeout: float = 5.0) -> dict[str, Any]:
    """The proxy's status as it wrote it after moment (time.time()). It rewrites the file
    twice a second; the file's mtime comes from a clock that may lag, never lead, so a
    status taken here never predates moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            written = lab.status_file.stat().st_mtime
        except FileNotFoundError:
            written = 0.0
        if written > moment and (status := read_status(lab)):
            return status
        time.sleep(0.05)
    raise RuntimeError(f"the proxy did not rewrite {lab.status_file} within {timeout} s")


def decision_counts(status: dict[str, Any]) -> dict[str, int | None]:
    """decided: the packets the proxy's queue (all its queues) gave a verdict to, its queue
    statistics' "packets"; new_flows: its verdict counter of first packets, where the data
    path keeps one. None where the status has no such figure."""
    queue, counters = status.get("queue") or {}, status.get("counters") or {}
    return {"decided": queue.get("packets"), "new_flows": counters.get(NEW_FLOW_COUNTER)}


@contextmanager
def counting_decisions(lab: Lab, proxied: bool) -> Iterator[dict[str, int | None]]:
    """What the proxy decided while the block ran, filled in when it ends: each key of
    decision_counts, after minus before (None without a proxy, or without the figure)."""
    counts: dict[str, int | None] = {}
    if not proxied:
        yield counts
        return
    before = decision_counts(status_written_after(lab, time.time()))
    yield counts
    after = decision_counts(status_written_after(lab, time.time()))
    for key, first in before.items():
        last = after.get(key)
        counts[key] = None if first is None or last is None else last - first


def short_connections(
    lab: Lab, binary: Path, vip: str, port: int, seconds: float, proxied: bool
) -> dict[str, Any]:
    """New connections per second: CONNECTION_THREADS client threads of connect, one
    32-byte request, its answer, close (tcpbench requests), for `seconds`. Beside the rate:
    the connections made (attempted) and failed, the source ports reused within the run,
    and what the proxy's queue decided meanwhile."""
    with counting_decisions(lab, proxied) as decisions:
        out = tcpbench(
            binary,
            lab.client_ns,
            "requests",
            vip,
            str(port),
            f"{seconds:g}",
            str(CONNECTION_THREADS),
            timeout=seconds + 60,
        )
    ok, failed, reused = (int(x) for x in out.split())
    if not ok:
        raise RuntimeError(f"no short connection to {vip}:{port} completed ({failed} failed)")
    return {
        "per_second": ok / seconds,
        "made": ok + failed,
        "failed": failed,
        "reused_ports": reused,
        **decisions,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
