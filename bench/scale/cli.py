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
from bench.scale.competitors import make_competitor, runnable_modes
from bench.scale.lab import LOCK_FILE, clean_leftovers, scale_lab, take_lock
from bench.scale.measure import measure
from bench.scale.plots import plot
from bench.scale.report import measures_json, report_markdown, results_json
from bench.scale.settings import (
    LAB_PREFIX,
    MODES,
    OPTIONAL_MODES,
    THROUGHPUT_SIZE,
    RunSettings,
    modes_at,
    resolve,
)


class Interrupted(Exception):
    """SIGTERM, raised where the run is, so that the labs come down through their `with`
    blocks and what was measured is still written."""


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def run_all(settings: RunSettings) -> list[dict[str, Any]]:
    """Every N, each in a fresh lab, with the modes interleaved; what was measured
    before an interruption is kept."""
    runs: list[dict[str, Any]] = []
    sizes = settings.sizes
    try:
        for round_number in range(settings.rounds):
            for size in sizes:
                name = f"{LAB_PREFIX}{round_number % 10}{sizes.index(size)}"
                with scale_lab(size, name) as (lab, api, cluster):
                    modes = [m for m in runnable_modes(size, lab) if m in settings.modes]
                    shift = round_number % len(modes)  # each round starts with another mode
                    for mode in modes[shift:] + modes[:shift]:
                        print(
                            f"round {round_number + 1}/{settings.rounds}, N = {size}: {mode}",
                            flush=True,
                        )
                        competitor = make_competitor(mode, lab, api, cluster)
                        run = measure(lab, cluster, competitor, size, settings)
                        runs.append({"round": round_number, "size": size, "mode": mode, **run})
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: the labs are down; writing what was measured", file=sys.stderr)
    return runs


def plan(settings: RunSettings) -> dict[str, Any]:
    """What a run with these settings would cover, for --plan. The kernel smoke test reads
    it to know what a complete results.json holds, rather than import the benchmark."""
    return {
        "command": settings.command,
        "sizes": settings.sizes,
        "modes": list(settings.modes),
        "modes_by_size": {
            str(n): [m for m in modes_at(n) if m in settings.modes] for n in settings.sizes
        },
        "optional_modes": [m for m in OPTIONAL_MODES if m in settings.modes],
        "throughput_size": THROUGHPUT_SIZE,
        "rounds": settings.rounds,
        "changes": settings.changes,
        "connects": settings.connects,
        "seconds": settings.seconds,
        "measures": measures_json(),
        "lab_prefix": LAB_PREFIX,
    }


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
    parser.add_argument("--sizes", type=int, nargs="+", help="N values instead of the default")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="modes instead of all")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print what these options would run (sizes, modes, measures...) as JSON and exit",
    )
    args = parser.parse_args(argv)
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
    try:
        for leftover in clean_leftovers():
            print(f"removed a leftover of an interrupted run: {leftover}", flush=True)
        runs = run_all(settings)
    finally:
        # Unlinked while still held: a run that opened it meanwhile fails its
        # non-blocking lock and stops, as it would have anyway.
        LOCK_FILE.unlink(missing_ok=True)
        lock.close()
    if not runs:
        return 1
    results = results_json(settings, started, runs)
    out_dir = args.out / started.strftime("%Y%m%dT%H%M%SZ-scale")
    out_dir.mkdir(parents=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "report.md").write_text(report_markdown(results))
    plot(results, out_dir)
    print((out_dir / "report.md").read_text())
    print(f"results in {out_dir}")
    return 0
