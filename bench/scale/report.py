"""The results: what each measure is, medians over rounds with their spread, results.json's
content and the Markdown report (targets, start to ready next to the restore time, what
the queue decided, KEP-3866's figures, the order of the modes in each round)."""

from __future__ import annotations

from typing import Any

from bench.scale.analysis import decisions, kep_comparison, targets, value
from bench.scale.settings import (
    ENDPOINTS,
    MODES,
    NFQPROXY_MODES,
    PROGRAMMING_ONLY,
    SKIPPED_MEASURES,
    TITLES,
)
from nfqproxy_lab.benchkit import (
    MET,
    NOISE,
    NOT_MEASURED,
    decided_text,
    metadata_markdown,
    spread,
)

# Which runs take a measure: every mode; not the programming-only ones (nfqproxy at its
# default --min-sync-period); those, and only at the run's throughput N.
EVERY, PACKETS, THROUGHPUT = "every mode", "packet path", "throughput"
CONNECT_HOW = (
    "tcpbench latency: sequential TCP connect() times from the client namespace, after 20 "
    "warm-up connects to each, in 3 chunks alternating between the first, the middle and the "
    "last service in iptables order; the client, and nfqproxy, on CPU 0"
)
MEASURES: dict[str, tuple[str, str, str]] = {
    # key: (title, how it was measured, which runs take it)
    "connect_first_us.p50": ("connect p50 to the first service (µs)", CONNECT_HOW, PACKETS),
    "connect_middle_us.p50": (
        "connect p50 to the middle service (µs)",
        "as above, to the service halfway down KUBE-SERVICES: iptables' average case",
        PACKETS,
    ),
    "connect_last_us.p50": (
        "connect p50 to the last service (µs)",
        "as above, to the last service in iptables order: iptables' worst case",
        PACKETS,
    ),
    "connect_first_us.p99": (
        "connect p99 to the first service (µs)",
        "as above, 99th percentile",
        PACKETS,
    ),
    "connect_middle_us.p99": (
        "connect p99 to the middle service (µs)",
        "as above, 99th percentile",
        PACKETS,
    ),
    "connect_last_us.p99": (
        "connect p99 to the last service (µs)",
        "as above, 99th percentile",
        PACKETS,
    ),
    "nodeport_first_us.p50": (
        "NodePort connect p50, first service (µs)",
        "tcpbench latency from the external client (outside the cluster, behind the uplink) "
        "to the node's address and the NodePort of the first, middle and last service, in "
        "alternating chunks; externalTrafficPolicy Cluster; every service a NodePort "
        "(20000 + i)",
        PACKETS,
    ),
    "nodeport_middle_us.p50": (
        "NodePort connect p50, middle service (µs)",
        "as above, the middle service's NodePort: iptables walks all of KUBE-SERVICES, then "
        "half of KUBE-NODEPORTS",
        PACKETS,
    ),
    "nodeport_last_us.p50": (
        "NodePort connect p50, last service (µs)",
        "as above, the last service's NodePort: iptables' worst case",
        PACKETS,
    ),
    "nodeport_last_us.p99": (
        "NodePort connect p99, last service (µs)",
        "as above, 99th percentile",
        PACKETS,
    ),
    "connections_per_second": (
        "new TCP connections per second",
        "tcpbench requests: 4 client threads of connect, a 32-byte request, its answer, close "
        "with RST, to the first service; source ports 1024-65535 taken in turn",
        PACKETS,
    ),
    "load_seconds": (
        "full load of N services (s)",
        "iptables and nftables: the restore of the whole layout; nfqproxy: its first sync "
        "(objects to programmed tables), as it reports it",
        EVERY,
    ),
    "ready_seconds": (
        "start to ready, list included (s)",
        "iptables and nftables: the same restore; nfqproxy: process start, list from the API, "
        "first sync and hooks",
        EVERY,
    ),
    "change_ms.p50": (
        "one endpoint change, p50 (ms)",
        "from the change (the API update, or the start of the restore of kube-proxy's partial "
        "sync) to the first connection the new endpoint accepts, while a client keeps "
        "connecting (one thread, a 200 µs pause between connections); each change follows "
        "the previous one's arrival at once",
        EVERY,
    ),
    "change_call_ms.p50": (
        "one endpoint change, the change call alone, p50 (ms)",
        "iptables: iptables-restore --noflush of the partial sync; nftables: nft -f of the "
        "change; nfqproxy: the API server recording the update",
        EVERY,
    ),
    "change_ms.p99": (
        "one endpoint change, p99 (ms)",
        "as above, 99th percentile of the changes",
        EVERY,
    ),
    "memory_mb": (
        "memory (MB)",
        "nfqproxy: the proxy's RSS once loaded; kube-proxy's rules: the kernel's Slab + "
        "VmallocUsed growth across the load (noisy)",
        EVERY,
    ),
    "tcp_gbits": (
        "TCP throughput (Gbit/s)",
        "iperf3, 1 stream, client -> VIP -> backend 1, at the run's throughput N",
        THROUGHPUT,
    ),
    "udp_kpps": (
        "64-byte UDP delivered (kpps)",
        "iperf3 -u -l 64 -b 0, datagrams received per second, at the run's throughput N",
        THROUGHPUT,
    ),
}


def measures_json() -> dict[str, dict[str, str]]:
    """MEASURES as results.json and --plan give them."""
    return {k: {"title": t, "how": h, "scope": s} for k, (t, h, s) in MEASURES.items()}


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


def results_json(header: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """header: the run's command, settings, metadata, orders and skipped modes; the rest is
    derived from the runs."""
    sizes = sorted({r["size"] for r in runs})
    summary = summarise(runs)
    return {
        **header,
        "sizes": sizes,
        "modes": [m for m in MODES if any(r["mode"] == m for r in runs)],
        "measures": measures_json(),
        "runs": runs,
        "summary": summary,
        "targets": targets(runs, sizes),
        "decisions": decisions(runs),
        "kep_3866": kep_comparison(summary, sizes),
    }


def _cell(cell: dict[str, float] | None) -> str:
    if cell is None:
        return "–"
    return f"{cell['median']:.3g} [{cell['min']:.3g}–{cell['max']:.3g}]"


def _measured(row: dict[str, Any]) -> str:
    values = row["values"]
    if not values:
        return row["note"] or "–"
    cell = spread(values)
    if row["unit"] == "ratio":
        return f"{cell['median']:.2f}× [{cell['min']:.2f}–{cell['max']:.2f}]"
    return f"{cell['median']:.3g} {row['unit']} [{cell['min']:.3g}–{cell['max']:.3g}]"


def _verdict(text: str) -> str:
    return {MET: "met", NOISE: "within the spread: noise", NOT_MEASURED: "not measured"}.get(
        text, "**not met**"
    )


def report_markdown(results: dict[str, Any]) -> str:
    sizes = [str(s) for s in results["sizes"]]
    summary = results["summary"]
    lines = [
        f"# nfqproxy against kube-proxy's iptables and nftables modes, N services × {ENDPOINTS} endpoints",
        "",
        f"Command: `{results['command']}`, started {results['started']}; {results['rounds']} "
        "round(s), each in a fresh lab per N, the modes taking turns in it, each round starting "
        "with another mode (the orders are listed at the end). Cells: median over rounds "
        "[min–max]: the spread, not the best round; latency and change cells are themselves "
        "percentiles within each run. A target is met only when every round meets it, not "
        "met when none does, and within the spread otherwise: a difference inside the spread "
        "is noise, not a win.",
        "",
        *metadata_markdown(results["metadata"]),
        "",
        "Modes:",
        *(f"- {m}: {TITLES[m]}" for m in results["modes"]),
        "",
        "## Targets",
        "",
        "| target | mode | at | measured: median [min–max] over rounds | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in results["targets"]:
        lines.append(
            f"| {row['measure']} ({row['issue']}) | {row['mode']} | {row['at']} | {_measured(row)} | {_verdict(row['verdict'])} |"
        )
    lines += [
        "",
        "Ratios are taken round by round (a mode against iptables or nftables mode in the same lab and minutes).",
    ]
    lines += _start_to_ready(results, sizes)
    lines += _decisions(results, sizes)
    lines += _kep(results)
    for key, (title, how, scope) in MEASURES.items():
        cells = summary.get(key)
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
        for mode in results["modes"]:
            if scope != EVERY and mode in PROGRAMMING_ONLY:
                continue
            if key.split(".")[0] in SKIPPED_MEASURES.get(mode, ()):
                continue
            row = cells.get(mode, {})
            lines.append(f"| {mode} | " + " | ".join(_cell(row.get(s)) for s in sizes) + " |")
    lines += ["", "## Order of the modes, round by round", ""]
    for number, by_size in enumerate(results["order"]):
        for size, order in by_size.items():
            lines.append(f"- round {number + 1}, N = {size}: {', '.join(order)}")
    if results["skipped"]:
        lines += ["", "## Modes left out", ""]
        lines += [f"- {mode}: {reason}" for mode, reason in results["skipped"].items()]
    failures = [
        f"- round {r['round'] + 1}, N = {r['size']}, {r['mode']}: {name}: {message}"
        for r in results["runs"]
        for name, message in r.get("errors", {}).items()
    ]
    if failures:
        lines += ["", "## Measures that failed (after one retry)", "", *failures]
    lines += [
        "",
        "Plots: latency.png, nodeport.png, programming.png, throughput.png (error bars: the lowest and "
        "highest round).",
        "",
    ]
    return "\n".join(lines)


def _start_to_ready(results: dict[str, Any], sizes: list[str]) -> list[str]:
    load, ready = (
        results["summary"].get("load_seconds", {}),
        results["summary"].get("ready_seconds", {}),
    )
    lines = [
        "",
        "## Start to ready, next to the restore time (s)",
        "",
        "kube-proxy's rules: the restore of the whole layout, which is all their start takes "
        "here (no kube-proxy process lists anything). nfqproxy: its first sync, then the whole "
        "start: process start, the list from the API server, the first sync and the hooks.",
        "",
        "| mode | " + " | ".join(f"N = {s}" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for mode in results["modes"]:
        if mode in NFQPROXY_MODES:
            cells = [
                f"sync {_cell(load.get(mode, {}).get(s))}; start to ready {_cell(ready.get(mode, {}).get(s))}"
                for s in sizes
            ]
        else:
            cells = [f"restore {_cell(load.get(mode, {}).get(s))}" for s in sizes]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def _decisions(results: dict[str, Any], sizes: list[str]) -> list[str]:
    lines = [
        "",
        "## Every measured connection reached the decision",
        "",
        "For each nfqproxy mode: the connections made (attempts, all rounds, warm-ups included) "
        "next to the packets its queue decided meanwhile (the status file's queue statistics, "
        "all queues, read before and after) and its count of first packets. A connection whose "
        "first packet skipped the queue (a reused 5-tuple whose conntrack entry still held its "
        "NAT, say) would make a path look faster than it is: decided per connection must stay "
        "at 1 or more. Conntrack is flushed before each mode; tcpbench closes with an RST, and "
        "conntrack replaces such an entry when a SYN reuses its 5-tuple.",
        "",
        "| measure | mode | N | connections made | packets decided | new flows counted | decided per connection, lowest round | source ports reused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "connect_decisions": "connect latency",
        "nodeport_decisions": "NodePort connect latency",
        "connection_decisions": "new connections per second",
    }

    def number(found: dict[str, Any], key: str) -> str:
        return "–" if found.get(key) is None else f"{found[key]:,}"

    for measure, by_mode in results["decisions"].items():
        for mode, by_size in by_mode.items():
            for size in sizes:
                found = by_size.get(size)
                if not found:
                    continue
                ratio = decided_text(found["lowest_decided_per_connection"])
                lines.append(
                    f"| {names[measure]} | {mode} | {size} | {number(found, 'made')} | {number(found, 'decided')} | {number(found, 'new_flows')} | {ratio} | {number(found, 'reused_ports')} |"
                )
    return lines


def _kep(results: dict[str, Any]) -> list[str]:
    kep = results["kep_3866"]
    published = " / ".join(f"{v:.3f}" for v in kep["kep_iptables_ms"].values())
    at = " / ".join(f"{int(k) // 1000}k" for k in kep["kep_iptables_ms"])
    lines = [
        "",
        "## First-packet latency against KEP-3866's published figures",
        "",
        f"KEP-3866 (kube-proxy's nftables mode) publishes first-packet latency p50 for iptables mode of {published} ms at {at} services, and about {kep['kep_nftables_ms']:.3f} ms for nftables mode at every size. "
        "Ours are connect() p50s (ms), medians over rounds, at the sizes of this run that match. The extra cost is the middle service's p50 minus nftables mode's, ours against the published difference: a difference cancels the fixed costs of either setup, and the middle service pays the average walk of KUBE-SERVICES (the first and the last bound it).",
        "",
        "| N | mode | KEP-3866 p50 | ours: first / middle / last | extra over nftables, ours | extra over nftables, KEP-3866 |",
        "|---|---|---|---|---|---|",
    ]

    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    for row in kep["rows"]:
        ours = " / ".join(ms(row["ours_ms"][p]) for p in ("first", "middle", "last"))
        lines.append(
            f"| {row['size']} | {row['mode']} | {ms(row['kep_ms'])} | {ours} | {ms(row['extra_ms'])} | {ms(row['kep_extra_ms'])} |"
        )
    lines += [
        "",
        "Where the measurement agrees and where it disagrees:",
        "",
        *(f"- {f}" for f in kep["findings"]),
    ]
    return lines
