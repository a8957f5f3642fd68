"""An A/B of two builds of nfqproxy on one data-path mode: what a code change costs.

    python -m bench.compare_builds OTHER_CHECKOUT [--mode fast] [--rounds 5] [--seconds 3]

OTHER_CHECKOUT is another clone or worktree of this repository, installed (`make install`
there). Each round runs `python -m bench.datapath --modes MODE --rounds 1` once from each
checkout, with its own virtualenv, so each runs its own build; the order alternates from
round to round. Ratios (this checkout over the other) are taken round by round; a ratio
whose two ranges overlap is noise.

Output: results/<time>-compare/ (or --out): results.json, report.md, compare.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nfqproxy_lab.benchkit import (
    Progress,
    metadata_markdown,
    overlap,
    paired_ratios,
    run_metadata,
    spread,
)

REPO = Path(__file__).resolve().parents[1]
MEASURES = {  # key: (title, unit, scale for display)
    "tcp1": ("TCP, 1 stream", "Gbit/s", 1.0),
    "tcp4": ("TCP, 4 streams", "Gbit/s", 1.0),
    "udp_pps": ("UDP 64 B delivered", "kpps", 1e-3),
    "cps": ("new connections per second", "k/s", 1e-3),
}


def one_run(checkout: Path, mode: str, seconds: int, out: Path) -> dict[str, float]:
    """One round of bench.datapath from that checkout: the mode's measures."""
    command = [str(checkout / ".venv" / "bin" / "python"), "-m", "bench.datapath"]
    args = ["--modes", mode, "--rounds", "1", "--seconds", str(seconds), "--flows", "100000"]
    subprocess.run([*command, *args, "--out", str(out)], cwd=checkout, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    (results,) = out.glob("*/results.json")
    runs = json.loads(results.read_text())["runs"]
    (run,) = [r for r in runs if r["mode"] == mode]
    return {key: float(run[key]) for key in MEASURES if key in run}


def summarize(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Spreads per build and measure, and this build over the other, round by round."""
    summary: dict[str, Any] = {"this": {}, "other": {}, "ratio": {}}
    for key in MEASURES:
        by_build = {b: {r: s[key] for r, s in enumerate(samples[b]) if key in s} for b in samples}
        if not all(by_build.values()):
            continue
        for build, values in by_build.items():
            summary[build][key] = spread(list(values.values()))
        ratios = paired_ratios(by_build["this"], by_build["other"])
        summary["ratio"][key] = {
            **spread(ratios),
            "noise": overlap(summary["this"][key], summary["other"][key]),
        }
    return summary


def report(results: dict[str, Any]) -> str:
    s, this, other = results["summary"], results["this_commit"], results["other_commit"]
    lines = [
        f"# A/B of two builds, mode {results['mode']}: {this[:7]} against {other[:7]}",
        "",
        f"Command: `{results['command']}`. {results['rounds']} rounds; each runs "
        f"`bench.datapath --modes {results['mode']} --rounds 1 --seconds "
        f"{results['seconds']}` from each checkout (its own build), alternating which goes "
        "first. Cells: median (min–max) over rounds; the ratio is taken round by round, and "
        "**noise** marks one whose two ranges overlap.",
        "",
        *metadata_markdown(results["metadata"]),
        "",
        f"| measure | {this[:7]} (this) | {other[:7]} (other) | this / other |",
        "|---|---|---|---|",
    ]
    for key, (title, unit, scale) in MEASURES.items():
        if key not in s["ratio"]:
            continue
        cells = [
            f"{s[b][key]['median'] * scale:.2f} ({s[b][key]['min'] * scale:.2f}–"
            f"{s[b][key]['max'] * scale:.2f}) {unit}"
            for b in ("this", "other")
        ]
        r = s["ratio"][key]
        ratio = f"{r['median']:.0%} ({r['min']:.0%}–{r['max']:.0%})"
        lines.append(f"| {title} | {cells[0]} | {cells[1]} | {ratio}"
                     f"{' noise' if r['noise'] else ''} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    keys = [k for k in MEASURES if k in s["ratio"]]
    figure, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2))
    for axis, key in zip([axes] if len(keys) == 1 else axes, keys, strict=True):
        title, unit, scale = MEASURES[key]
        for i, build in enumerate(("this", "other")):
            cell = s[build][key]
            median = cell["median"] * scale
            error = [[median - cell["min"] * scale], [cell["max"] * scale - median]]
            axis.bar(i, median, yerr=error, capsize=4, color=("#228833", "#888888")[i])
        axis.set_xticks([0, 1], [results["this_commit"][:7], results["other_commit"][:7]])
        axis.set_title(title, fontsize=9)
        axis.set_ylabel(unit)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path, nargs="?", help="the other checkout, installed")
    parser.add_argument("--mode", default="fast", help="a bench.datapath mode both know")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report-from", type=Path, metavar="RESULTS_JSON",
                        help="render a run's report and plot again from its results.json")  # fmt: skip
    args = parser.parse_args(argv)
    if args.report_from:
        results = json.loads(args.report_from.read_text())
        results["summary"] = summarize(results["samples"])
        write_outputs(results, args.report_from.parent)
        return 0
    if args.other is None:
        parser.error("the other checkout is needed (or --report-from)")
    other = args.other.resolve()
    if not (other / ".venv" / "bin" / "python").exists():
        parser.error(f"{other} has no .venv: run `make install` there first")
    builds = {"this": REPO, "other": other}
    samples: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
    progress = Progress([("", b) for _ in range(args.rounds) for b in builds])
    with tempfile.TemporaryDirectory(prefix="nfqproxy-compare-") as scratch:
        for round_number in range(args.rounds):
            order = ["this", "other"] if round_number % 2 == 0 else ["other", "this"]
            for build in order:
                print(progress.start(f"round {round_number + 1}: {build}", "", build), flush=True)
                out = Path(scratch) / f"{build}-{round_number}"
                samples[build].append(one_run(builds[build], args.mode, args.seconds, out))
                progress.finish()
    results = {
        "command": "python -m bench.compare_builds " + " ".join(argv or sys.argv[1:]),
        "metadata": run_metadata(REPO),
        "mode": args.mode,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "this_commit": run_metadata(REPO)["git_commit"],
        "other_commit": run_metadata(other)["git_commit"],
        "samples": samples,
        "summary": summarize(samples),
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = args.out or REPO / "results" / f"{stamp}-compare"
    write_outputs(results, out_dir)
    print(report(results))
    print(f"results in {out_dir}")
    return 0


def write_outputs(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(report(results))
    plot(results, out_dir / "compare.png")


if __name__ == "__main__":
    sys.exit(main())
