"""Data-path benchmark: nfqproxy fast and reference against kernel DNAT and the NFQUEUE ceiling.

    python -m bench.datapath [--quick] [--rounds N] [--seconds S] [--out results]

Every measure runs each competitor in turn inside one round, and rounds repeat, so that
a noisy shared machine hits all of them alike; the report gives medians, spreads and
ratios. Traffic goes client -> VIP -> backend through the lab's node namespace, one
fresh lab per competitor and round.

Competitors:
- kernel:    iptables DNAT in kube-proxy's rule layout for one service (src/nfqproxy_lab/kube_proxy_rules.py)
- ceiling:   the kernel layout plus an NFQUEUE hop both ways, answered by bench/nfq_ceiling.c,
             an accept-all loop with F_GSO and batch verdicts: the most NFQUEUE can carry here
- ceiling-copy: the same, but copying whole packets out and handing each back with its
             verdict, as any rewriter must: the most a proxy on NFQUEUE can carry
- fast:      nfqproxy --datapath fast
- reference: nfqproxy --datapath reference

Measures: TCP bulk throughput (iperf3, 1 and 4 streams); UDP delivered rate and loss with
64-byte payloads (iperf3 -u -l 64 -b 0); bytes per tracked flow (RSS growth while filling
the fast table with 1M flows, 200k for the reference); Maglev table build time
(M = 65537, 100 backends).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nfqproxy_lab import netns
from nfqproxy_lab.kube_proxy_rules import KubeService, restore_all
from nfqproxy_lab.proxy import start_proxy, wait_ready
from nfqproxy_lab.topology import NODE_NAME, Lab, all_labs, backend_ip

VIP, PORT = "10.96.0.50", 5201
QUEUE = 100
MODES = ("kernel", "ceiling", "ceiling-copy", "fast", "reference")
BENCH_DIR = Path(__file__).resolve().parent


def bench_manifest() -> str:
    endpoint = backend_ip(1)
    return f"""apiVersion: v1
kind: Service
metadata: {{name: iperf, namespace: bench}}
spec:
  clusterIP: {VIP}
  ports:
  - {{name: tcp, protocol: TCP, port: {PORT}}}
  - {{name: udp, protocol: UDP, port: {PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: iperf-1
  namespace: bench
  labels: {{kubernetes.io/service-name: iperf}}
addressType: IPv4
ports:
- {{name: tcp, protocol: TCP, port: {PORT}}}
- {{name: udp, protocol: UDP, port: {PORT}}}
endpoints:
- addresses: [{endpoint}]
  nodeName: {NODE_NAME}
"""


def build_ceiling(out_dir: Path) -> Path:
    binary = out_dir / "nfq_ceiling"
    netns.run(
        [
            "gcc",
            "-O2",
            "-Wall",
            "-o",
            str(binary),
            str(BENCH_DIR / "nfq_ceiling.c"),
            "-lnetfilter_queue",
            "-lmnl",
        ]
    )
    return binary


@contextmanager
def competitor(mode: str, ceiling: Path, name: str) -> Iterator[Lab]:
    """A lab with an iperf3 server on backend 1 and VIP:PORT served by the given mode."""
    if name in all_labs():
        Lab.load(name).down()  # left by a benchmark that was killed
    lab = Lab(name, 1)
    try:
        lab.up()
        (lab.manifests_dir / "iperf.yaml").write_text(bench_manifest())
        lab.start_process(
            "iperf3", netns.exec_command(lab.backend_ns(1), ["iperf3", "-s", "-p", str(PORT)])
        )
        services = [
            KubeService(f"bench/iperf:{p}", VIP, PORT, p, ((backend_ip(1), PORT),))
            for p in ("tcp", "udp")
        ]

        def in_node(command: list[str]) -> list[str]:
            return netns.exec_command(lab.node_ns, command)

        if mode in ("kernel", "ceiling", "ceiling-copy"):
            netns.run(in_node(["iptables-restore", "--noflush"]), stdin=restore_all(services))
        if mode in ("ceiling", "ceiling-copy"):
            queue = ["-j", "NFQUEUE", "--queue-num", str(QUEUE)]
            netns.run(in_node(["iptables", "-t", "raw", "-A", "PREROUTING", "-d", VIP, *queue]))
            netns.run(
                in_node(
                    [
                        "iptables",
                        "-t",
                        "mangle",
                        "-A",
                        "POSTROUTING",
                        "-m",
                        "conntrack",
                        "--ctorigdst",
                        VIP,
                        "--ctdir",
                        "REPLY",
                        *queue,
                    ]
                )
            )
            copy = ["copy"] if mode == "ceiling-copy" else []
            process = lab.start_process("ceiling", in_node([str(ceiling), str(QUEUE), *copy]))
            _wait_for_line(lab.dir / "ceiling.log", "ready", process)
        if mode in ("fast", "reference"):
            wait_ready(lab, start_proxy(lab, "--datapath", mode, "--queue-num", str(QUEUE)))
        time.sleep(0.3)  # let the iperf3 server bind
        yield lab
    finally:
        lab.down()


def _wait_for_line(
    path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{path.name}: exited: {path.read_text(errors='replace')}")
        time.sleep(0.05)
    raise TimeoutError(f"{path.name} did not say {text!r}")


def iperf(
    lab: Lab, seconds: float, *extra: str, vip: str = VIP, port: int = PORT
) -> dict[str, Any]:
    command = ["iperf3", "-c", vip, "-p", str(port), "-t", str(seconds), "-J", *extra]
    result = subprocess.run(
        netns.exec_command(lab.client_ns, command),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    report: dict[str, Any] = json.loads(result.stdout or "{}")
    if "error" in report or result.returncode != 0:
        raise RuntimeError(
            f"iperf3 {' '.join(extra)}: {report.get('error', result.stderr.strip())}"
        )
    return report


def tcp_gbits(lab: Lab, seconds: float, streams: int, vip: str = VIP, port: int = PORT) -> float:
    report = iperf(lab, seconds, "-P", str(streams), vip=vip, port=port)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9


def udp_small(lab: Lab, seconds: float, vip: str = VIP, port: int = PORT) -> dict[str, float]:
    report = iperf(lab, seconds, "-u", "-l", "64", "-b", "0", vip=vip, port=port)
    total = report["end"]["sum"]
    packets, lost = float(total.get("packets", 0)), float(total.get("lost_packets", 0))
    return {
        "delivered_pps": (packets - lost) / float(total["seconds"]),
        "loss_percent": float(total.get("lost_percent", 0.0)),
    }


RSS_PROBE = """
import time
from ipaddress import IPv4Network
from nfqproxy_lab.packets import tcp_packet

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

flows = {flows}
before = rss()
if {fast}:
    from nfqproxy.datapath.fast.datapath import FastDatapath as Kind
else:
    from nfqproxy.datapath.reference.datapath import ReferenceDatapath as Kind
from nfqproxy.model import Backend, ServicePort, Snapshot
from ipaddress import ip_address
dp = Kind([IPv4Network("10.96.0.0/12")], capacity=flows)
vip = ip_address("10.96.0.10")
dp.apply(Snapshot({{(vip, "TCP", 80): ServicePort("b/s:p", vip, "TCP", 80,
                   tuple(Backend(ip_address(f"10.244.11.{{i}}"), 80) for i in range(2, 5)))}}))
template = bytearray(tcp_packet("10.0.0.1", 1, "10.96.0.10", 80))
for i in range(flows):
    template[12:16] = (0x0A000000 + (i >> 16)).to_bytes(4, "big")
    template[20:22] = (i & 0xFFFF).to_bytes(2, "big")
    verdict = dp.process(bytes(template))
assert verdict.reason == "new_flow", verdict
print((rss() - before) / flows)
"""


def bytes_per_flow(fast: bool, flows: int) -> float:
    code = RSS_PROBE.format(flows=flows, fast=fast)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=True
    )
    return float(result.stdout.strip())


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


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--flows", type=int, default=1_000_000, help="flows for the fast table's RSS probe"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 100k flows")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.flows = 1, 2.0, 100_000
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        print("bench.datapath needs root and iperf3 (make install provides it)", file=sys.stderr)
        return 2
    out_dir = args.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-datapath")
    out_dir.mkdir(parents=True)
    ceiling = build_ceiling(out_dir)
    # Every competitor has its entry from the start, measured or not: the kernel smoke test
    # (tests/kernel/test_bench_smoke.py) learns the competitors from these keys.
    samples: dict[str, dict[str, list[float]]] = {
        m: {"tcp1": [], "tcp4": [], "udp_pps": [], "udp_loss": []} for m in MODES
    }
    stop = False

    def interrupted(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, interrupted)
    for round_number in range(args.rounds):
        for mode in MODES:
            if stop:
                break
            print(f"round {round_number + 1}/{args.rounds}: {mode}", flush=True)
            with competitor(mode, ceiling, f"bench{MODES.index(mode)}") as lab:
                samples[mode]["tcp1"].append(tcp_gbits(lab, args.seconds, 1))
                samples[mode]["tcp4"].append(tcp_gbits(lab, args.seconds, 4))
                udp = udp_small(lab, args.seconds)
                samples[mode]["udp_pps"].append(udp["delivered_pps"])
                samples[mode]["udp_loss"].append(udp["loss_percent"])
    print("bytes per flow and Maglev build time", flush=True)
    memory = {
        "fast": bytes_per_flow(True, args.flows),
        "reference": bytes_per_flow(False, min(args.flows, 200_000)),
    }
    maglev = {"compiled": maglev_build_ms(True, 50), "reference": maglev_build_ms(False, 3)}
    results = build_results(args, samples, memory, maglev)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(report_markdown(results))
    plot(results, out_dir / "datapath.png")
    print((out_dir / "report.md").read_text())
    print(f"results in {out_dir}")
    return 0


def build_results(
    args: argparse.Namespace,
    samples: dict[str, dict[str, list[float]]],
    memory: dict[str, float],
    maglev: dict[str, list[float]],
) -> dict[str, Any]:
    medians = {m: {k: statistics.median(v) for k, v in s.items() if v} for m, s in samples.items()}

    def ratio(measure: str, a: str, b: str) -> float | None:
        if measure in medians[a] and measure in medians[b] and medians[b][measure]:
            return medians[a][measure] / medians[b][measure]
        return None

    return {
        "command": "python -m bench.datapath" + (" --quick" if args.quick else ""),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "machine": os.uname().release,
        "samples": samples,
        "summary": {m: {k: summary(v) for k, v in s.items() if v} for m, s in samples.items()},
        "ratios": {
            "fast/ceiling tcp1": ratio("tcp1", "fast", "ceiling"),
            "fast/ceiling-copy tcp1": ratio("tcp1", "fast", "ceiling-copy"),
            "fast/ceiling-copy tcp4": ratio("tcp4", "fast", "ceiling-copy"),
            "fast/ceiling tcp4": ratio("tcp4", "fast", "ceiling"),
            "fast/kernel tcp1": ratio("tcp1", "fast", "kernel"),
            "fast/kernel tcp4": ratio("tcp4", "fast", "kernel"),
            "fast/ceiling udp_pps": ratio("udp_pps", "fast", "ceiling"),
            "fast/reference udp_pps": ratio("udp_pps", "fast", "reference"),
        },
        "bytes_per_flow": memory,
        "maglev_build_ms": {k: summary(v) for k, v in maglev.items()},
    }


def report_markdown(results: dict[str, Any]) -> str:
    s, r = results["summary"], results["ratios"]

    def cell(mode: str, measure: str, scale: float = 1.0, digits: int = 2) -> str:
        if measure not in s[mode]:
            return "n/a"
        m = s[mode][measure]
        return f"{m['median'] * scale:.{digits}f} ({m['min'] * scale:.{digits}f}–{m['max'] * scale:.{digits}f})"

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    lines = [
        f"# Data-path benchmark ({results['rounds']} rounds of {results['seconds']:g} s, kernel {results['machine']})",
        "",
        f"Command: `{results['command']}`. Medians, with (min–max) over rounds. Each round runs",
        "every competitor in a fresh namespace lab: client -> VIP -> node -> backend, iperf3.",
        "",
        "| competitor | TCP 1 stream, Gbit/s | TCP 4 streams, Gbit/s | UDP 64 B delivered, kpps | UDP loss % |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        lines.append(
            f"| {mode} | {cell(mode, 'tcp1')} | {cell(mode, 'tcp4')} | "
            f"{cell(mode, 'udp_pps', 1e-3, 1)} | {cell(mode, 'udp_loss', 1, 1)} |"
        )
    mem, mag = results["bytes_per_flow"], results["maglev_build_ms"]
    lines += [
        "",
        "| target (issue 3) | measured |",
        "|---|---|",
        f"| fast TCP ≥ 90% of the ceiling | {pct(r['fast/ceiling tcp1'])} (1 stream), {pct(r['fast/ceiling tcp4'])} (4 streams) |",
        f"| (fast TCP against ceiling-copy, the rewriting ceiling) | {pct(r['fast/ceiling-copy tcp1'])} (1 stream), {pct(r['fast/ceiling-copy tcp4'])} (4 streams) |",
        f"| fast TCP ≥ 40% of kernel DNAT | {pct(r['fast/kernel tcp1'])} (1 stream), {pct(r['fast/kernel tcp4'])} (4 streams) |",
        f"| small UDP ≥ 90% of the ceiling | {pct(r['fast/ceiling udp_pps'])} |",
        f"| small UDP ≥ 6× the reference | {r['fast/reference udp_pps'] or 0:.1f}× |",
        f"| ≤ 64 bytes per flow | {mem['fast']:.1f} B (fast, RSS growth over the fill); reference {mem['reference']:.0f} B |",
        f"| Maglev build (M = 65537, 100 backends) ≤ 2 ms | {mag['compiled']['median']:.2f} ms compiled "
        f"({mag['compiled']['min']:.2f}–{mag['compiled']['max']:.2f}); reference {mag['reference']['median']:.0f} ms |",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for axis, (measure, title, scale) in zip(
        axes,
        [
            ("tcp1", "TCP, 1 stream (Gbit/s)", 1.0),
            ("tcp4", "TCP, 4 streams (Gbit/s)", 1.0),
            ("udp_pps", "UDP 64 B delivered (kpps)", 1e-3),
        ],
        strict=True,
    ):
        modes = [m for m in MODES if measure in s[m]]
        medians = [s[m][measure]["median"] * scale for m in modes]
        low = [medians[i] - s[m][measure]["min"] * scale for i, m in enumerate(modes)]
        high = [s[m][measure]["max"] * scale - medians[i] for i, m in enumerate(modes)]
        axis.bar(
            modes,
            medians,
            yerr=[low, high],
            capsize=4,
            color=["#888888", "#4477aa", "#66ccee", "#228833", "#ccbb44"][: len(modes)],
        )
        axis.set_title(title)
    fig.suptitle(f"nfqproxy data paths, median and range over {results['rounds']} rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
