"""The command line: options, the rounds with their modes rotated, a progress line with the
time left, and the files written."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench.datapath
from bench.datapath.competitors import (
    Binaries,
    ModeUnavailable,
    build_binaries,
    competitor,
    measure,
)
from bench.datapath.memory import bytes_per_flow_all, conntrack_entry_bytes, maglev_build_ms
from bench.datapath.plots import plot
from bench.datapath.report import report_markdown, results_json
from bench.datapath.settings import (
    DEFAULT_MODES,
    LAB_PREFIX,
    MEASURES,
    MODE_TITLES,
    MODES,
    NFQPROXY_MODES,
    OPTIONAL_MODES,
    Settings,
    resolve,
    unavailable_reason,
)
from nfqproxy_lab.benchkit import Progress, rotated, run_metadata

REPO = Path(__file__).resolve().parents[2]


class Interrupted(Exception):
    """SIGTERM, raised where the run is, so that the lab comes down through its `with`
    block and what was measured is still written."""


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def plan(settings: Settings) -> dict[str, Any]:
    """What a run with these settings would cover, for --plan; the kernel smoke test reads
    it rather than import the benchmark."""
    unavailable = {m: r for m in settings.modes if (r := unavailable_reason(m))}
    runnable = [m for m in settings.modes if m not in unavailable]
    return {
        "command": settings.command,
        "modes": list(settings.modes),
        "default_modes": list(DEFAULT_MODES),
        "all_modes": list(MODES),
        "titles": {m: MODE_TITLES[m] for m in settings.modes},
        "optional_modes": [m for m in OPTIONAL_MODES if m in settings.modes],
        "nfqproxy_modes": [m for m in settings.modes if m in NFQPROXY_MODES],
        "unavailable": unavailable,  # known here; nftables is checked in its lab
        "rounds": settings.rounds,
        "seconds": settings.seconds,
        "flows": settings.flows,
        "order": [rotated(runnable, r) for r in range(settings.rounds)],
        "measures": {k: {"title": t, "unit": u, "how": h} for k, (t, u, _, h) in MEASURES.items()},
        "lab_prefix": LAB_PREFIX,
    }


def run_rounds(
    settings: Settings, out_dir: Path
) -> tuple[list[dict[str, Any]], list[list[str]], dict[str, str]]:
    """Every round, modes rotated; returns the runs, each round's order and the modes left
    out with the reason. What was measured before an interruption is kept. The C tools
    are built in a folder of their own, not among the results."""
    with tempfile.TemporaryDirectory(prefix="nfqproxy-bench-tools-") as tools:
        return _run_rounds(settings, build_binaries(Path(tools)))


def _run_rounds(
    settings: Settings, binaries: Binaries
) -> tuple[list[dict[str, Any]], list[list[str]], dict[str, str]]:
    skipped = {m: r for m in settings.modes if (r := unavailable_reason(m))}
    runnable = [m for m in settings.modes if m not in skipped]
    progress = Progress([("", m) for _ in range(settings.rounds) for m in runnable])
    runs: list[dict[str, Any]] = []
    orders: list[list[str]] = []
    try:
        for round_number in range(settings.rounds):
            orders.append([])
            # Rotated over the modes still runnable: nftables may turn out not to be.
            for mode in rotated([m for m in runnable if m not in skipped], round_number):
                label = f"round {round_number + 1}/{settings.rounds}: {mode}"
                print(progress.start(label, "", mode), flush=True)
                try:
                    name = f"{LAB_PREFIX}{MODES.index(mode)}"
                    with competitor(mode, binaries, name) as running:
                        run = measure(running, settings, binaries)
                except ModeUnavailable as exc:
                    skipped[mode] = str(exc)
                    print(f"  {mode} left out: {exc}", flush=True)
                    progress.skip("", mode)
                    progress.forget(mode)
                    continue
                except (RuntimeError, OSError, TimeoutError) as exc:  # the mode did not start
                    run = {"errors": {"start": str(exc)[:300]}}
                    print(f"  {mode} failed to start: {exc}", file=sys.stderr, flush=True)
                orders[-1].append(mode)
                runs.append({"round": round_number, "mode": mode, **run})
                progress.finish()
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: the lab is down; writing what was measured", file=sys.stderr)
    return runs, orders, skipped


def write_outputs(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(report_markdown(results))
    plot(results, out_dir / "datapath.png")


def rerender(path: Path) -> int:
    """The report and the plot again from a results.json, with today's analysis."""
    saved = json.loads(path.read_text())
    if "runs" not in saved:
        print(f"{path} predates --report-from: it holds no runs to read", file=sys.stderr)
        return 2
    missing: dict[str, Any] = {"metadata": {}, "order": [], "skipped": {}}
    keys = ("command", "started", "metadata", "rounds", "seconds", "modes", "order", "skipped")
    header = {k: saved.get(k, missing.get(k)) for k in keys}
    results = results_json(
        header, saved["runs"], saved["bytes_per_flow"], maglev=saved["maglev_build_ms"]
    )
    write_outputs(results, path.parent)
    print(f"report and plot rewritten in {path.parent}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.datapath",
        description=bench.datapath.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, help="rounds (5; --quick: 1)")
    parser.add_argument(
        "--seconds", type=float, help="each measure's length (3; --quick: 1); iperf3 whole s"
    )
    parser.add_argument("--flows", type=int, help="flows for the RSS probe (1M; --quick: 100k)")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="modes instead of the default")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s, 100k flows")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--plan", action="store_true", help="print what would run, as JSON")
    parser.add_argument(
        "--report-from", type=Path, metavar="RESULTS_JSON", help="re-render a run's report"
    )
    args = parser.parse_args(argv)
    if args.report_from:
        return rerender(args.report_from)
    settings = resolve(args)
    if args.plan:
        print(json.dumps(plan(settings), indent=1))
        return 0
    if os.geteuid() != 0 or shutil.which("iperf3") is None or shutil.which("gcc") is None:
        print(
            "bench.datapath needs root, iperf3 and gcc (make install provides them)",
            file=sys.stderr,
        )
        return 2
    started = datetime.now(UTC)
    out_dir = args.out / started.strftime("%Y%m%dT%H%M%SZ-datapath")
    out_dir.mkdir(parents=True)
    signal.signal(signal.SIGTERM, _interrupted)
    metadata = run_metadata(REPO)
    runs, orders, skipped = run_rounds(settings, out_dir)
    if not runs:
        print("nothing was measured", file=sys.stderr)
        return 1
    print("bytes per flow and Maglev build time", flush=True)
    memory: dict[str, Any] = dict(bytes_per_flow_all(settings.flows))
    memory["conntrack entry (kernel)"] = conntrack_entry_bytes()
    maglev = {"compiled": maglev_build_ms(True, 50), "reference": maglev_build_ms(False, 3)}
    header = {
        "command": settings.command,
        "started": started.isoformat(timespec="seconds"),
        "metadata": metadata,
        "rounds": settings.rounds,
        "seconds": settings.seconds,
        "modes": list(settings.modes),
        "order": orders,
        "skipped": skipped,
    }
    results = results_json(header, runs, memory, maglev_samples=maglev)
    write_outputs(results, out_dir)
    print((out_dir / "report.md").read_text())
    print(f"results in {out_dir}")
    return 0
