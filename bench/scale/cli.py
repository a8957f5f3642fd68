"""The command line: options, the rounds with their modes interleaved, and the files
written."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench.scale
from bench.scale.competitors import make_competitor, runnable_modes, unavailable_reason
from bench.scale.lab import LOCK_FILE, clean_leftovers, scale_lab, take_lock
from bench.scale.measure import measure
from bench.scale.plots import plot
from bench.scale.report import measures_json, report_markdown, results_json
from bench.scale.settings import (
    DEFAULT_MODES,
    LAB_PREFIX,
    MODES,
    NFQPROXY_MODES,
    OPTIONAL_MODES,
    PROGRAMMING_ONLY,
    SKIPPED_MEASURES,
    THROUGHPUT_SIZE,
    TITLES,
    RunSettings,
    modes_at,
    resolve,
)
from nfqproxy_lab.benchkit import Progress, rotated, run_metadata

REPO = Path(__file__).resolve().parents[2]


class Interrupted(Exception):
    """SIGTERM, raised where the run is, so that the labs come down through their `with`
    blocks and what was measured is still written."""


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def run_all(
    settings: RunSettings,
) -> tuple[list[dict[str, Any]], list[dict[str, list[str]]], dict[str, str]]:
    """Every N, each in a fresh lab each round, with the modes taking turns and rotated;
    returns the runs, each round's order by N, and the modes left out with the reason.
    What was measured before an interruption is kept."""
    runs: list[dict[str, Any]] = []
    orders: list[dict[str, list[str]]] = []
    skipped: dict[str, str] = {}
    sizes = settings.sizes
    steps = [
        (str(size), kind)
        for _ in range(settings.rounds)
        for size in sizes
        for kind in ["lab", *(m for m in modes_at(size, sizes) if m in settings.modes)]
    ]
    progress = Progress(steps)
    try:
        for round_number in range(settings.rounds):
            orders.append({})
            for size in sizes:
                name = f"{LAB_PREFIX}{round_number % 10}{sizes.index(size)}"
                label = f"round {round_number + 1}/{settings.rounds}, N = {size}"
                print(progress.start(f"{label}: lab", str(size), "lab"), flush=True)
                with scale_lab(size, name) as (lab, api, cluster):
                    progress.finish()
                    modes = runnable_modes(size, lab, settings, skipped)
                    for mode in skipped:
                        progress.forget(mode)
                    order = rotated(modes, round_number)  # each round starts with another mode
                    orders[-1][str(size)] = order
                    for mode in order:
                        print(progress.start(f"{label}: {mode}", str(size), mode), flush=True)
                        competitor = make_competitor(mode, lab, api, cluster)
                        run = measure(lab, cluster, competitor, mode, size, settings)
                        runs.append({"round": round_number, "size": size, "mode": mode, **run})
                        progress.finish()
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: the labs are down; writing what was measured", file=sys.stderr)
    return runs, orders, skipped


def plan(settings: RunSettings) -> dict[str, Any]:
    """What a run with these settings would cover, for --plan. The kernel smoke test reads
    it to know what a complete results.json holds, rather than import the benchmark."""
    modes_by_size = {
        str(n): [m for m in modes_at(n, settings.sizes) if m in settings.modes]
        for n in settings.sizes
    }
    unavailable = {m: r for m in settings.modes if (r := unavailable_reason(m))}
    return {
        "command": settings.command,
        "sizes": settings.sizes,
        "modes": list(settings.modes),
        "default_modes": list(DEFAULT_MODES),
        "all_modes": list(MODES),
        "titles": {m: TITLES[m] for m in settings.modes},
        "modes_by_size": modes_by_size,
        "optional_modes": [m for m in OPTIONAL_MODES if m in settings.modes],
        "nfqproxy_modes": [m for m in settings.modes if m in NFQPROXY_MODES],
        "programming_only": [m for m in PROGRAMMING_ONLY if m in settings.modes],
        # measure keys (before the "."), by mode, that the mode does not take
        "skipped_measures": {
            m: list(keys) for m, keys in SKIPPED_MEASURES.items() if m in settings.modes
        },
        "unavailable": unavailable,  # known here; nftables is checked in each lab
        "throughput_size": settings.throughput_size,
        "rounds": settings.rounds,
        "order": [
            {
                n: rotated([m for m in modes if m not in unavailable], r)
                for n, modes in modes_by_size.items()
            }
            for r in range(settings.rounds)
        ],
        "changes": settings.changes,
        "connects": settings.connects,
        "seconds": settings.seconds,
        "measures": measures_json(),
        "lab_prefix": LAB_PREFIX,
    }


def write_outputs(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(report_markdown(results))
    plot(results, out_dir)


HEADER = (
    "command",
    "started",
    "metadata",
    "rounds",
    "changes",
    "connects",
    "seconds",
    "throughput_size",
    "order",
    "skipped",
)


def rerender(path: Path) -> int:
    """The report and the plots again from a results.json, with today's analysis. A run of
    an older version lacks some of the header: its report says less, not something else."""
    saved = json.loads(path.read_text())
    missing: dict[str, Any] = {"metadata": {}, "order": [], "skipped": {}}
    header = {k: saved.get(k, missing.get(k)) for k in HEADER}
    header["throughput_size"] = header["throughput_size"] or THROUGHPUT_SIZE
    write_outputs(results_json(header, saved["runs"]), path.parent)
    print(f"report and plots rewritten in {path.parent}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=bench.scale.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="N = 100 and 1000, one round, short measures (≤ 2 min)"
    )
    parser.add_argument("--full", action="store_true", help="adds N = 30000")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--changes", type=int, default=None, help="endpoint changes per run (20)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="each rate measure's length (2; --quick: 1)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="N values instead of the default")
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, help="modes instead of the default (all but reference)"
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument(
        "--report-from", type=Path, metavar="RESULTS_JSON", help="re-render a run's report"
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print what these options would run (sizes, modes, measures...) as JSON and exit",
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
            "the benchmark needs root, iperf3 and gcc (make install provides them)", file=sys.stderr
        )
        return 2
    try:
        lock = take_lock()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    started = datetime.now(UTC)
    metadata = run_metadata(REPO)
    try:
        for leftover in clean_leftovers():
            print(f"removed a leftover of an interrupted run: {leftover}", flush=True)
        runs, orders, skipped = run_all(settings)
    finally:
        # Unlinked while still held: a run that opened it meanwhile fails its
        # non-blocking lock and stops, as it would have anyway.
        LOCK_FILE.unlink(missing_ok=True)
        lock.close()
    if not runs:
        return 1
    header = {
        "command": settings.command,
        "started": started.isoformat(timespec="seconds"),
        "metadata": metadata,
        "rounds": settings.rounds,
        "changes": settings.changes,
        "connects": settings.connects,
        "seconds": settings.seconds,
        "throughput_size": settings.throughput_size,
        "order": orders,
        "skipped": skipped,
    }
    results = results_json(header, runs)
    out_dir = args.out / started.strftime("%Y%m%dT%H%M%SZ-scale")
    out_dir.mkdir(parents=True)
    write_outputs(results, out_dir)
    print((out_dir / "report.md").read_text())
    print(f"results in {out_dir}")
    return 0
