"""datapath.png: one panel per measure, each mode's median with an error bar from its
lowest to its highest round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.datapath.settings import MEASURES, MODES

COLOURS = dict(
    zip(
        MODES,
        [
            "#888888",
            "#aa7744",
            "#4477aa",
            "#66ccee",
            "#228833",
            "#88cc99",  # fast-traced: as fast, lighter
            "#ee6677",
            "#aa3377",
            "#ccbb44",
            "#444444",  # kernel-v6: as kernel, darker
            "#887722",  # reference-v6: as reference, darker
            "#115522",  # fast-v6: as fast, darker
            "#772255",  # offload-v6: as offload-nq, darker
        ],
        strict=True,
    )
)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    keys = [k for k in MEASURES if any(k in summary[m] for m in summary)]
    columns = 3
    rows = max(1, -(-len(keys) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.2 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys, strict=False):
        title, unit, scale, _ = MEASURES[key]
        modes = [m for m in results["measured_modes"] if key in summary[m]]
        cells = [summary[m][key] for m in modes]
        medians = [c["median"] * scale for c in cells]
        errors = [
            [(c["median"] - c["min"]) * scale for c in cells],
            [(c["max"] - c["median"]) * scale for c in cells],
        ]
        axis.bar(modes, medians, yerr=errors, capsize=4, color=[COLOURS[m] for m in modes])
        axis.set_title(f"{title} ({unit})")
        axis.tick_params(axis="x", rotation=30)
    for axis in list(axes.flat)[len(keys) :]:
        axis.set_visible(False)
    fig.suptitle(f"data paths: median and range over {results['rounds']} round(s), modes rotated")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
