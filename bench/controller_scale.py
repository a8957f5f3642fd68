"""Controller at scale: 10,000 Services × 3 endpoints from the in-process API server.

    python -m bench.controller_scale [--services N] [--changes K] [--out results]

It runs the proxy's own sync path: informers over HTTP, the runner with
--min-sync-period 0, the model, and the fast data path's tables. It installs no hooks and
binds no queue, because this measures the controller, not the kernel. It reports:
- cold start: from starting the informers to the first full programming of the tables;
- one endpoint change: from the API server recording it to the data path's table holding
  it, over K changes (p50 and p99);
- the process's RSS once everything is programmed.
It writes JSON, a Markdown report and a PNG (latency distribution) to results/<time>/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime
from ipaddress import IPv4Network, ip_address
from pathlib import Path
from typing import Any

from nfqproxy.controller import Proxy, ProxyConfig
from nfqproxy.datapath.frontends import table_key
from nfqproxy.sources.kubernetes import api_client
from nfqproxy_lab.apiserver import FakeApiServer


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def service(i: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"svc-{i}", "namespace": "bench"},
        "spec": {
            "clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
            "ports": [{"name": "http", "port": 80}],
        },
    }


def endpoint_slice(i: int, count: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"svc-{i}-x",
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": [f"10.{100 + e}.{i // 250}.{i % 250 + 1}"]} for e in range(count)
        ],
    }


async def run(services: int, endpoints: int, changes: int) -> dict[str, Any]:
    server = FakeApiServer(bookmark_interval=10)
    await server.start()
    for i in range(services):
        await server.create("services", service(i))
        await server.create("endpointslices", endpoint_slice(i, endpoints))
    rss_before = rss_bytes()
    proxy = Proxy(
        ProxyConfig(
            service_cidrs=(IPv4Network("10.96.0.0/12"),),
            datapath="fast",
            min_sync_period=0.0,
            install_hooks=False,
            flow_capacity=1 << 16,
        )
    )
    client = await api_client(server.url, None)
    source = proxy.kubernetes_source(client)
    started = time.perf_counter()
    tasks = [asyncio.create_task(source.run()), asyncio.create_task(proxy._run_after_sync())]
    while proxy.syncs == 0:
        await asyncio.sleep(0.001)
    cold = time.perf_counter() - started
    latencies = []
    for k in range(changes):
        i = k * (services // max(changes, 1))
        key = table_key((ip_address(f"10.96.{i // 250}.{i % 250 + 1}"), "TCP", 80))
        programmed = proxy.datapath.frontend(key)
        assert programmed is not None, key
        before = programmed.backends
        changed = time.perf_counter()
        await server.update("endpointslices", endpoint_slice(i, endpoints - 1))
        while getattr(proxy.datapath.frontend(key), "backends", None) == before:
            await asyncio.sleep(0.0002)
        latencies.append((time.perf_counter() - changed) * 1000)
    rss = rss_bytes()
    for task in tasks:
        task.cancel()
    await client.close()
    await server.stop()
    ordered = sorted(latencies)
    return {
        "services": services,
        "endpoints_per_service": endpoints,
        "changes": changes,
        "cold_start_seconds": cold,
        "change_ms": {
            "p50": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max": ordered[-1],
            "samples": latencies,
        },
        "rss_mb": rss / 2**20,
        "rss_growth_mb": (rss - rss_before) / 2**20,
    }


def report(results: dict[str, Any]) -> str:
    c = results["change_ms"]
    return "\n".join(
        [
            f"# Controller at scale: {results['services']} services × {results['endpoints_per_service']} endpoints",
            "",
            "Command: `python -m bench.controller_scale`. The proxy's sync path against the in-process API",
            "server over HTTP: informers, the runner (--min-sync-period 0), the model, the fast tables. No hooks.",
            "",
            "| measure | target (issue 4) | measured |",
            "|---|---|---|",
            f"| cold start to tables programmed | ≤ 5 s | {results['cold_start_seconds']:.2f} s |",
            f"| one endpoint change, API event to tables updated | p99 ≤ 20 ms | p50 {c['p50']:.1f} ms, p99 {c['p99']:.1f} ms (max {c['max']:.1f}, {results['changes']} changes) |",
            f"| controller RSS | ≤ 300 MB | {results['rss_mb']:.0f} MB (the test API server shares the process: {results['rss_growth_mb']:.0f} MB grew with the proxy) |",
            "",
        ]
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = sorted(results["change_ms"]["samples"])
    fig, axis = plt.subplots(figsize=(7, 4))
    axis.plot(
        samples, [(i + 1) / len(samples) for i in range(len(samples))], drawstyle="steps-post"
    )
    axis.axvline(20, color="red", linestyle="--", label="target p99 20 ms")
    axis.set_xlabel("API event to tables updated (ms)")
    axis.set_ylabel("fraction of changes")
    axis.set_title(f"One endpoint change at {results['services']} services")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.services, args.endpoints, args.changes))
    out_dir = args.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-controller")
    out_dir.mkdir(parents=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(report(results))
    plot(results, out_dir / "controller.png")
    print(report(results))
    print(f"results in {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
