"""The PNG plots: latency and programming time against N, throughput at one N; each
median with an error bar from the fastest to the slowest round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.scale.settings import MODES, THROUGHPUT_SIZE


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

    for name, panels in (
        (
            "latency",
            [
                ("connect_last_us.p50", "connect p50, last service (µs)"),
                ("connect_first_us.p50", "connect p50, first service (µs)"),
            ],
        ),
        (
            "programming",
            [("load_seconds", "full load (s)"), ("change_ms.p99", "one endpoint change p99 (ms)")],
        ),
    ):
        fig, axes = plt.subplots(1, len(panels), figsize=(11, 4))
        for axis, (key, label) in zip(axes, panels, strict=True):
            for mode in MODES:
                xs, ys, errors = series(key, mode)
                if xs:
                    axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=mode)
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel("services (N)")
            axis.set_ylabel(label)
            axis.legend()
        fig.suptitle(f"nfqproxy vs kube-proxy iptables mode: {name} vs N")
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=100)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (key, label) in zip(
        axes, [("tcp_gbits", "TCP Gbit/s"), ("udp_kpps", "UDP 64 B kpps")], strict=True
    ):
        modes = [m for m in MODES if str(THROUGHPUT_SIZE) in summary.get(key, {}).get(m, {})]
        cells = [summary[key][m][str(THROUGHPUT_SIZE)] for m in modes]
        axis.bar(modes, [c["median"] for c in cells], yerr=spread(cells), capsize=4)
        axis.set_ylabel(label)
        axis.tick_params(axis="x", rotation=20)
    fig.suptitle(f"throughput at N = {THROUGHPUT_SIZE}")
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=100)
    plt.close(fig)
