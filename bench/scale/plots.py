"""The PNG plots: latency at the first, middle and last service and programming time
against N, rates at the throughput N; each median with an error bar from the fastest to
the slowest round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.scale.settings import MODES

FIGURES = (
    (
        "latency",
        [
            ("connect_first_us.p50", "connect p50, first service (µs)"),
            ("connect_middle_us.p50", "connect p50, middle service (µs)"),
            ("connect_last_us.p50", "connect p50, last service (µs)"),
        ],
    ),
    (
        "nodeport",
        [
            ("nodeport_first_us.p50", "NodePort connect p50, first service (µs)"),
            ("nodeport_middle_us.p50", "NodePort connect p50, middle service (µs)"),
            ("nodeport_last_us.p50", "NodePort connect p50, last service (µs)"),
        ],
    ),
    (
        "programming",
        [
            ("load_seconds", "full load: restore or first sync (s)"),
            ("ready_seconds", "start to ready, list included (s)"),
            ("change_ms.p99", "one endpoint change p99 (ms)"),
        ],
    ),
)


def plot(results: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]

    def spread(cells: list[dict[str, float]]) -> list[list[float]]:
        """Error bars of medians: down to the fastest round, up to the slowest."""
        return [
            [c["median"] - c["min"] for c in cells],
            [c["max"] - c["median"] for c in cells],
        ]

    def series(key: str, mode: str) -> tuple[list[int], list[float], list[list[float]]]:
        by_size = summary.get(key, {}).get(mode, {})
        sizes = sorted(int(s) for s in by_size)
        cells = [by_size[str(s)] for s in sizes]
        return sizes, [c["median"] for c in cells], spread(cells)

    for name, panels in FIGURES:
        fig, axes = plt.subplots(1, len(panels), figsize=(16, 4.5))
        for axis, (key, label) in zip(axes, panels, strict=True):
            for mode in MODES:
                xs, ys, errors = series(key, mode)
                if xs:
                    axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=mode)
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel("services (N)")
            axis.set_ylabel(label)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=7)
        fig.suptitle(f"nfqproxy vs kube-proxy's rules: {name} vs N (median, min–max over rounds)")
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=100)
        plt.close(fig)
    size = str(results.get("throughput_size", ""))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for axis, (key, label) in zip(
        axes,
        [
            ("tcp_gbits", "TCP, 1 stream (Gbit/s)"),
            ("udp_kpps", "UDP 64 B delivered (kpps)"),
            ("connections_per_second", "new connections per second"),
        ],
        strict=True,
    ):
        modes = [m for m in MODES if size in summary.get(key, {}).get(m, {})]
        cells = [summary[key][m][size] for m in modes]
        axis.bar(modes, [c["median"] for c in cells], yerr=spread(cells), capsize=4)
        axis.set_ylabel(label)
        axis.tick_params(axis="x", rotation=30, labelsize=7)
    fig.suptitle(f"rates at N = {size} (median, min–max over rounds)")
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=100)
    plt.close(fig)
