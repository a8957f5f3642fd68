"""The results: what each measure is, medians over rounds, the targets, results.json's
content and the Markdown report."""

from __future__ import annotations

import os
import statistics
from datetime import datetime
from typing import Any

from bench.scale.settings import ENDPOINTS, MODES, RunSettings


def spread(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


MEASURES: dict[str, tuple[str, str]] = {
    # key: (title, how it was measured)
    "connect_first_us.p50": (
        "connect p50 to the first service (µs)",
        "tcpbench latency: sequential TCP connect() times from the client namespace, after 20 warm-up connects, in 3 chunks alternating between the first and the last service; the client, and nfqproxy, on CPU 0",
    ),
    "connect_last_us.p50": (
        "connect p50 to the last service (µs)",
        "as above, to the last service in iptables order: iptables' worst case",
    ),
    "connect_first_us.p99": ("connect p99 to the first service (µs)", "as above, 99th percentile"),
    "connect_last_us.p99": ("connect p99 to the last service (µs)", "as above, 99th percentile"),
    "connections_per_second": (
        "new TCP connections per second",
        "tcpbench rate: 2 client threads of connect() then close with RST, to the first service",
    ),
    "load_seconds": (
        "full load of N services (s)",
        "iptables: the iptables-restore of the whole layout; nfqproxy: its first sync (objects to programmed tables), as it reports it",
    ),
    "ready_seconds": (
        "start to ready (s)",
        "iptables: the same restore; nfqproxy: process start, list from the API, first sync and hooks",
    ),
    "change_ms.p50": (
        "one endpoint change, p50 (ms)",
        "from the change (the API update, or the start of iptables-restore --noflush of kube-proxy's partial sync) to the first connection the new endpoint accepts, while a client keeps connecting (one thread, a 200 µs pause between connections)",
    ),
    "change_call_ms.p50": (
        "one endpoint change, the change call alone, p50 (ms)",
        "iptables: iptables-restore --noflush of the partial sync; nfqproxy: the API server recording the update",
    ),
    "change_ms.p99": ("one endpoint change, p99 (ms)", "as above, 99th percentile of the changes"),
    "memory_mb": (
        "memory (MB)",
        "nfqproxy: the proxy's RSS once loaded; iptables: the kernel's Slab + VmallocUsed growth across the load (noisy)",
    ),
    "tcp_gbits": (
        "TCP throughput at N = 1000 (Gbit/s)",
        "iperf3, 1 stream, client -> VIP -> backend 1",
    ),
    "udp_kpps": (
        "64-byte UDP delivered at N = 1000 (kpps)",
        "iperf3 -u -l 64 -b 0, datagrams received per second",
    ),
}


def measures_json() -> dict[str, dict[str, str]]:
    """MEASURES as results.json and --plan give them."""
    return {k: {"title": t, "how": h} for k, (t, h) in MEASURES.items()}


def value(run: dict[str, Any], key: str) -> float | None:
    node: Any = run
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """measure -> mode -> N -> median/min/max over rounds."""
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for key in MEASURES:
        for mode in MODES:
            for size in sorted({r["size"] for r in runs}):
                samples = [
                    v
                    for r in runs
                    if r["mode"] == mode and r["size"] == size and (v := value(r, key)) is not None
                ]
                if samples:
                    table.setdefault(key, {}).setdefault(mode, {})[str(size)] = spread(samples)
    return table


def targets(summary: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    def median(key: str, mode: str, size: int) -> float | None:
        cell = summary.get(key, {}).get(mode, {}).get(str(size))
        return None if cell is None else float(cell["median"])

    big, small = max(sizes), min(sizes)
    fast_p50 = median("connect_last_us.p50", "fast", big)
    iptables_p50 = min(
        (
            v
            for m in ("iptables-legacy", "iptables-nft")
            if (v := median("connect_last_us.p50", m, big)) is not None
        ),
        default=None,
    )
    last_small, last_big = (
        median("connect_last_us.p50", "fast", small),
        median("connect_last_us.p50", "fast", big),
    )
    growth = None if last_small is None or last_big is None else (last_big / last_small - 1) * 100
    change_p99 = median("change_ms.p99", "fast", big)
    load = median("load_seconds", "fast", big)
    rows = [
        (
            "connect p50 to the last service, nfqproxy fast vs iptables mode's best back end",
            f"N = {big}",
            "≤ iptables'",
            fast_p50,
            iptables_p50,
            fast_p50 is not None and iptables_p50 is not None and fast_p50 <= iptables_p50,
        ),
        (
            f"growth of nfqproxy fast's connect p50 (last service) from N = {small} to N = {big}",
            "",
            "≤ 10%",
            growth,
            10.0,
            growth is not None and growth <= 10,
        ),
        (
            "one-endpoint-change programming p99, nfqproxy fast",
            f"N = {big}",
            "≤ 10 ms",
            change_p99,
            10.0,
            change_p99 is not None and change_p99 <= 10,
        ),
        (
            "full load, nfqproxy fast",
            f"N = {big}",
            "≤ 1 s",
            load,
            1.0,
            load is not None and load <= 1.0,
        ),
    ]
    return [
        {"measure": m, "at": at, "target": t, "value": v, "bound": b, "met": bool(met)}
        for m, at, t, v, b, met in rows
    ]


def results_json(
    settings: RunSettings, started: datetime, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """What results.json holds: the run's settings, every run, the summary and targets."""
    summary = summarise(runs)
    return {
        "command": settings.command,
        "started": started.isoformat(timespec="seconds"),
        "machine": os.uname().release,
        "sizes": sorted({r["size"] for r in runs}),
        "modes": [m for m in MODES if any(r["mode"] == m for r in runs)],
        "rounds": settings.rounds,
        "changes": settings.changes,
        "measures": measures_json(),
        "runs": runs,
        "summary": summary,
        "targets": targets(summary, sorted({r["size"] for r in runs})),
    }


def report_markdown(results: dict[str, Any]) -> str:
    sizes = [str(s) for s in results["sizes"]]
    lines = [
        f"# nfqproxy against kube-proxy's iptables mode, N services × {ENDPOINTS} endpoints",
        "",
        f"Command: `{results['command']}`, started {results['started']}, kernel {results['machine']}, "
        f"{results['rounds']} round(s), modes interleaved within each N. Cells: median over rounds "
        "[min–max]; latency and change cells are themselves percentiles within each run.",
        "",
        "## Targets (issue 5)",
        "",
        "| measure | at | target | measured | met |",
        "|---|---|---|---|---|",
    ]
    for row in results["targets"]:
        measured = "n/a" if row["value"] is None else f"{row['value']:.3g}"
        lines.append(
            f"| {row['measure']} | {row['at']} | {row['target']} | {measured} (bound {row['bound']:.3g}) | {'yes' if row['met'] else '**no**'} |"
        )
    for key, (title, how) in MEASURES.items():
        cells = results["summary"].get(key)
        if not cells:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            f"How: {how}.",
            "",
            "| mode | " + " | ".join(f"N = {s}" for s in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        for mode in MODES:
            row = cells.get(mode, {})
            lines.append(f"| {mode} | " + " | ".join(_cell(row.get(s)) for s in sizes) + " |")
    failures = [
        f"- round {r['round'] + 1}, N = {r['size']}, {r['mode']}: {name}: {message}"
        for r in results["runs"]
        for name, message in r.get("errors", {}).items()
    ]
    if failures:
        lines += ["", "## Measures that failed (after one retry)", "", *failures]
    lines += ["", "Plots: latency.png, programming.png, throughput.png.", ""]
    return "\n".join(lines)


def _cell(cell: dict[str, float] | None) -> str:
    if cell is None:
        return "–"
    return f"{cell['median']:.3g} [{cell['min']:.3g}–{cell['max']:.3g}]"
