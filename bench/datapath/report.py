"""results.json and report.md: medians with their spread, ratios to kernel DNAT round by
round, when a difference is noise, what the queue decided, and the targets. Everything is
derived from the runs, so that `--report-from` renders an old run with today's analysis."""

from __future__ import annotations

from typing import Any

from bench.datapath.settings import MEASURES, MODE_TITLES, MODES, NFQPROXY_MODES, V6_MODES
from nfqproxy_lab.benchkit import (
    MET,
    NOISE,
    NOT_MEASURED,
    decided_text,
    decision_totals,
    metadata_markdown,
    overlap,
    paired_ratios,
    spread,
    verdict,
)

OFFLOAD = ("offload-1q", "offload-nq")


def by_round(runs: list[dict[str, Any]], mode: str, key: str) -> dict[int, float]:
    return {r["round"]: float(r[key]) for r in runs if r["mode"] == mode and r.get(key) is not None}


def decisions(runs: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The new-connections measure's connections against what the queue decided."""
    taken = [r["connections"] for r in runs if r["mode"] == mode and "connections" in r]
    return decision_totals(taken) if taken else None


def ratio_row(
    runs: list[dict[str, Any]], summary: dict[str, Any], a: str, b: str, key: str
) -> dict[str, Any] | None:
    ratios = paired_ratios(by_round(runs, a, key), by_round(runs, b, key))
    if not ratios:
        return None
    return {**spread(ratios), "noise": overlap(summary[a][key], summary[b][key])}


def targets(
    runs: list[dict[str, Any]], memory: dict[str, Any], maglev: dict[str, Any]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def ratio_target(
        text: str, mode: str, key: str, baseline: str, bound: float, issue: str
    ) -> None:
        values = paired_ratios(by_round(runs, mode, key), by_round(runs, baseline, key))
        rows.append(_row(text, mode, values, bound, False, "ratio", issue))

    for mode in OFFLOAD:
        ratio_target(
            "TCP, 1 stream: ≥ 90% of kernel DNAT (iptables layout), same run",
            mode,
            "tcp1",
            "kernel",
            0.9,
            "this issue",
        )
        ratio_target(
            "TCP, 4 streams: ≥ 90% of kernel DNAT (iptables layout), same run",
            mode,
            "tcp4",
            "kernel",
            0.9,
            "this issue",
        )
        ratio_target(
            "small UDP delivered: ≥ 90% of kernel DNAT",
            mode,
            "udp_pps",
            "kernel",
            0.9,
            "this issue",
        )
    ratio_target("TCP, 1 stream: ≥ 90% of the ceiling", "fast", "tcp1", "ceiling", 0.9, "issue 3")
    ratio_target("TCP, 4 streams: ≥ 90% of the ceiling", "fast", "tcp4", "ceiling", 0.9, "issue 3")
    ratio_target("TCP, 1 stream: ≥ 40% of kernel DNAT", "fast", "tcp1", "kernel", 0.4, "issue 3")
    ratio_target("TCP, 4 streams: ≥ 40% of kernel DNAT", "fast", "tcp4", "kernel", 0.4, "issue 3")
    ratio_target(
        "small UDP delivered: ≥ 90% of the ceiling", "fast", "udp_pps", "ceiling", 0.9, "issue 3"
    )
    ratio_target(
        "small UDP delivered: ≥ 6× the reference", "fast", "udp_pps", "reference", 6.0, "issue 3"
    )
    fast_bytes = memory.get("fast")
    rows.append(
        _row(
            "≤ 64 bytes per flow (RSS growth over the fill)",
            "fast",
            [fast_bytes] if isinstance(fast_bytes, float) else [],
            64,
            True,
            "B",
            "issue 3",
        )
    )
    compiled = maglev.get("compiled")
    rows.append(
        _row(
            "Maglev build, M = 65537, 100 backends, ≤ 2 ms (median of 50)",
            "fast",
            [compiled["median"]] if compiled else [],
            2.0,
            True,
            "ms",
            "issue 3",
        )
    )
    return rows


def _row(
    text: str, mode: str, values: list[float], bound: float, at_most: bool, unit: str, issue: str
) -> dict[str, Any]:
    judged = verdict(values, bound, at_most)
    return {
        "target": text,
        "mode": mode,
        "issue": issue,
        "values": values,
        "bound": bound,
        "unit": unit,
        "verdict": judged,
        "met": judged == MET,
    }


def results_json(
    header: dict[str, Any],
    runs: list[dict[str, Any]],
    memory: dict[str, Any],
    maglev_samples: dict[str, list[float]] | None = None,
    maglev: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """header: the run's command, settings, metadata, order and skipped modes."""
    measured = [m for m in MODES if any(r["mode"] == m for r in runs)]
    samples = {m: {k: list(by_round(runs, m, k).values()) for k in MEASURES} for m in measured}
    summary = {m: {k: spread(v) for k, v in s.items() if v} for m, s in samples.items()}
    if maglev is None:
        maglev = {k: spread(v) for k, v in (maglev_samples or {}).items() if v}
    versus: dict[str, dict[str, Any]] = {}
    for baseline in ("kernel", "kernel-v6", "fast"):
        for mode in measured:
            for key in MEASURES:
                if (
                    mode == baseline
                    # each family against its own kernel DNAT
                    or (baseline.startswith("kernel") and _v6(mode) != _v6(baseline))
                    or baseline not in summary
                    or key not in summary[mode]
                    or key not in summary[baseline]
                ):
                    continue
                row = ratio_row(runs, summary, mode, baseline, key)
                if row is not None:
                    versus.setdefault(baseline, {}).setdefault(mode, {})[key] = row
    return {
        **header,
        "measured_modes": measured,
        "runs": runs,
        "samples": samples,
        "summary": summary,
        "versus": versus,
        "decisions": {m: d for m in measured if m in NFQPROXY_MODES and (d := decisions(runs, m))},
        "targets": targets(runs, memory, maglev),
        "bytes_per_flow": memory,
        "maglev_build_ms": maglev,
    }


# --- Markdown -----------------------------------------------------------------------------


def _cell(cell: dict[str, float] | None, scale: float, digits: int) -> str:
    if not cell:
        return "–"
    m, lo, hi = (cell[k] * scale for k in ("median", "min", "max"))
    return f"{m:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def _ratio(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "–"
    text = f"{cell['median']:.0%} ({cell['min']:.0%}–{cell['max']:.0%})"
    return text + " noise" if cell["noise"] else text


def _value(row: dict[str, Any]) -> str:
    values = row["values"]
    if not values:
        return "–"
    cell = spread(values)
    if row["unit"] == "ratio":
        return (
            f"{cell['median']:.0%} ({cell['min']:.0%}–{cell['max']:.0%})"
            if len(values) > 1
            else f"{cell['median']:.0%}"
        )
    return f"{cell['median']:.3g} {row['unit']}"


def _verdict(text: str) -> str:
    return {MET: "met", NOISE: "within the spread: noise", NOT_MEASURED: "not measured"}.get(
        text, "**not met**"
    )


def report_markdown(results: dict[str, Any]) -> str:
    s, modes = results["summary"], results["measured_modes"]
    lines = [
        f"# Data-path benchmark: {results['rounds']} round(s) of {results['seconds']:g} s per measure",
        "",
        f"Command: `{results['command']}`. Every round runs each mode once, in a fresh namespace lab "
        "(client -> VIP -> node -> backend), and round r starts with mode r mod M: the orders "
        "are listed below. Cells: median over rounds (min–max), the spread to read, not the best "
        "round. A ratio is taken round by round (the modes of a round share its minutes), then "
        "its median (min–max); **noise** marks a ratio whose two modes' ranges overlap: that "
        "difference is inside the spread, not a result.",
        "",
        *metadata_markdown(results["metadata"]),
        "",
        "## Results",
        "",
        "| mode | " + " | ".join(f"{t}, {u}" for t, u, _, _ in MEASURES.values()) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for mode in modes:
        digits = {"udp_loss": 1, "udp_pps": 0, "cps": 1, "rss_mb": 0}
        cells = [_cell(s[mode].get(k), MEASURES[k][2], digits.get(k, 2)) for k in MEASURES]
        lines.append(f"| {MODE_TITLES[mode]} | " + " | ".join(cells) + " |")
    lines += ["", "How:", *(f"- {t}: {how}." for t, _, _, how in MEASURES.values())]
    for baseline, title in (
        ("kernel", "kernel DNAT (iptables layout)"),
        ("kernel-v6", "IPv6 kernel DNAT (ip6tables, kube-proxy's iptables layout)"),
        ("fast", "nfqproxy fast"),
    ):
        table = results["versus"].get(baseline, {})
        keys = [
            k for k in ("tcp1", "tcp4", "udp_pps", "cps") if any(k in row for row in table.values())
        ]
        if not table or not keys:
            continue
        lines += [
            "",
            f"## Against {title}, round by round",
            "",
            "| mode | " + " | ".join(MEASURES[k][0] for k in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for mode, row in table.items():
            if baseline == "fast" and mode not in NFQPROXY_MODES:
                continue
            lines.append(f"| {mode} | " + " | ".join(_ratio(row.get(k)) for k in keys) + " |")
    lines += _decisions_markdown(results)
    lines += [
        "",
        "## Targets",
        "",
        "| target | mode | measured (median, min–max over rounds) | verdict |",
        "|---|---|---|---|",
    ]
    for row in results["targets"]:
        lines.append(
            f"| {row['target']} ({row['issue']}) | {row['mode']} | {_value(row)} | {_verdict(row['verdict'])} |"
        )
    lines += [
        "",
        "A verdict is met only when every round meets the target, not met when none does, and within the spread otherwise.",
    ]
    lines += _memory_markdown(results)
    lines += ["", "## Order of the modes, round by round", ""]
    lines += [f"{i + 1}. {', '.join(order)}" for i, order in enumerate(results["order"])]
    if results["skipped"]:
        lines += ["", "## Modes left out", ""]
        lines += [f"- {mode}: {reason}" for mode, reason in results["skipped"].items()]
    failures = [
        f"- round {r['round'] + 1}, {r['mode']}: {name}: {message}"
        for r in results["runs"]
        for name, message in r.get("errors", {}).items()
    ]
    if failures:
        lines += ["", "## Measures that failed (after one retry)", "", *failures]
    lines += [
        "",
        "Plot: datapath.png (median, error bars from the lowest to the highest round).",
        "",
    ]
    return "\n".join(lines)


def _decisions_markdown(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Every measured connection reached the decision",
        "",
        "Connections made by the new-connections measure (attempts, all rounds) next to the "
        "packets the proxy's queue decided meanwhile (its status file's queue statistics, "
        "all queues, before and after) and its count of first packets (new flows). A "
        "connection whose first packet the queue never saw would make the proxy look faster "
        "than it is: the offload path must decide at least one packet per connection (its "
        "SYN); the fast path decides every packet. Source ports reused within a measure are "
        "counted: conntrack replaces an entry closed by an RST when a SYN reuses its 5-tuple, "
        "so those connections are new to it too, and the counts show it.",
        "",
        "| mode | connections made (failed) | packets decided | new flows counted | decided per connection, lowest round | source ports reused |",
        "|---|---|---|---|---|---|",
    ]

    def number(d: dict[str, Any], key: str) -> str:
        return "–" if d[key] is None else f"{d[key]:,}"

    for mode, d in results["decisions"].items():
        ratio = decided_text(d["lowest_decided_per_connection"])
        lines.append(
            f"| {mode} | {number(d, 'made')} ({number(d, 'failed')}) | {number(d, 'decided')} | {number(d, 'new_flows')} | {ratio} | {number(d, 'reused_ports')} |"
        )
    return lines


def _memory_markdown(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Memory per flow and Maglev", ""]
    for name, value in results["bytes_per_flow"].items():
        if name == "conntrack entry (kernel)":
            if value is not None:
                lines.append(
                    f"- a conntrack entry: {value} B in the kernel (the nf_conntrack slab's "
                    "object size), per flow of every path conntrack tracks, kernel DNAT and "
                    "offload included; no RSS shows it"
                )
        elif isinstance(value, float):
            lines.append(
                f"- {name}: {value:.1f} B per flow in userspace (RSS growth filling its table "
                "with first packets; a path whose flows conntrack keeps shows about 0)"
            )
        else:
            lines.append(f"- {name}: {value}")
    for name, cell in results["maglev_build_ms"].items():
        lines.append(
            f"- Maglev build, {name}: {cell['median']:.2f} ms ({cell['min']:.2f}–{cell['max']:.2f}, {cell['n']} builds)"
        )
    return lines


def _v6(mode: str) -> bool:
    return mode in V6_MODES
