"""What the benchmarks (bench/) share, with each other and with their unit tests: the order
of the modes in each round, spreads and when a difference is only noise, the verdict on a
target, the progress line with the time left, and the run's metadata. Here in the lab
package, as kube_proxy_rules is, so that tests check it without importing bench."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# --- order --------------------------------------------------------------------------------


def rotated(modes: Sequence[str], round_number: int) -> list[str]:
    """The modes in the order round round_number (from 0) runs them: it starts with mode
    round_number mod len(modes), so that no mode is always first (on a cold machine) or last
    (after the others warmed it), and drift within a round touches every mode alike."""
    if not modes:
        return []
    shift = round_number % len(modes)
    return [*modes[shift:], *modes[:shift]]


# --- spreads, ratios, noise and verdicts --------------------------------------------------


def spread(samples: Sequence[float]) -> dict[str, float]:
    """Median, min and max over runs (rounds), and how many: the spread is what to read,
    not the best run."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def overlap(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Whether two spreads' [min, max] ranges overlap: a difference between their medians is
    then inside the noise of the run, not a result."""
    return a["min"] <= b["max"] and b["min"] <= a["max"]


def paired_ratios(a: Mapping[int, float], b: Mapping[int, float]) -> list[float]:
    """a / b round by round, for the rounds that measured both (b not 0). The modes of a
    round share its lab and its minutes, so a per-round ratio cancels the drift between
    rounds that the ratio of two medians keeps."""
    return [a[r] / b[r] for r in sorted(a) if b.get(r)]


MET, NOT_MET, NOISE, NOT_MEASURED = "met", "not met", "within the spread", "not measured"


def verdict(values: Sequence[float], bound: float, at_most: bool) -> str:
    """A target's verdict over the rounds' values: met when every round meets the bound, not
    met when none does, and otherwise within the spread, which is neither a win nor a loss."""
    if not values:
        return NOT_MEASURED
    meets = [v <= bound if at_most else v >= bound for v in values]
    return MET if all(meets) else NOT_MET if not any(meets) else NOISE


def decision_totals(taken: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Connections made against what the proxy's queue decided meanwhile, over several
    measures (rounds): each count summed (None when a measure lacks it), and the lowest
    per-measure decided / made. Below 1, some connection's first packet never reached the
    queue's decision."""

    def total(key: str) -> int | None:
        values: list[int] = [t[key] for t in taken if t.get(key) is not None]
        return sum(values) if taken and len(values) == len(taken) else None

    ratios = [
        t["decided"] / t["made"] for t in taken if t.get("decided") is not None and t.get("made")
    ]
    return {
        "rounds": len(taken),
        "made": total("made"),
        "failed": total("failed"),
        "reused_ports": total("reused_ports"),
        "decided": total("decided"),
        "new_flows": total("new_flows"),
        "lowest_decided_per_connection": min(ratios) if ratios else None,
    }


def decided_text(lowest: float | None) -> str:
    """The lowest decided-per-connection ratio as the reports print it, flagged below 1."""
    if lowest is None:
        return "\u2013"  # an en dash, as the reports mark a missing figure
    if lowest >= 1:
        return f"{lowest:.2f}"
    return f"{lowest:.5g} **below 1: connections skipped the decision**"


# --- progress -----------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """45 s, 3 min 05 s, 1 h 02 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class Progress:
    """The progress line of a long run, with the time left. Each step has a group (the
    number of services, say) and a kind (the mode, say); a step still to run is expected to
    take the mean of the steps of its group and kind done so far, else of its group's, else
    of all. The steps to run may come in any order, and may be dropped."""

    pending: list[tuple[str, str]]  # (group, kind) of every step still to run
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    taken: list[tuple[str, str, float]] = field(default_factory=list)
    started: float = field(init=False)
    _current: tuple[str, str, float] | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()

    def _expected(self, group: str, kind: str) -> float | None:
        for same in (
            lambda g, k: (g, k) == (group, kind),
            lambda g, k: g == group,
            lambda g, k: True,
        ):
            seconds = [s for g, k, s in self.taken if same(g, k)]
            if seconds:
                return statistics.fmean(seconds)
        return None

    def seconds_left(self) -> float | None:
        """The steps still to run, the current one included; None until one is done, with
        nothing to estimate from."""
        if not self.taken:
            return None
        return sum(self._expected(g, k) or 0.0 for g, k in self.pending)

    def start(self, label: str, group: str, kind: str) -> str:
        """A step starts; returns its progress line."""
        now = self.clock()
        self._current = (group, kind, now)
        left = self.seconds_left()
        estimate = (
            "time left unknown until a step is done"
            if left is None
            else f"about {format_duration(left)} left"
        )
        total = self.done + max(1, len(self.pending))
        elapsed = format_duration(now - self.started)
        return f"[{self.done + 1}/{total}] {label} ({elapsed} elapsed, {estimate})"

    def _drop(self, group: str, kind: str) -> None:
        if (group, kind) in self.pending:
            self.pending.remove((group, kind))

    def finish(self) -> None:
        """The step started last is done."""
        if self._current is not None:
            group, kind, began = self._current
            self.taken.append((group, kind, self.clock() - began))
            self._drop(group, kind)
            self._current = None
        self.done += 1

    def skip(self, group: str, kind: str) -> None:
        """A step that will not run after all."""
        self._current = None
        self._drop(group, kind)

    def forget(self, kind: str) -> None:
        """No step of this kind will run any more (its mode is unavailable here, say)."""
        self.pending = [step for step in self.pending if step[1] != kind]


# --- what this installation runs ---------------------------------------------------------


def datapath_unavailable(name: str) -> str | None:
    """Why this nfqproxy cannot run the data path `name` (its factory does not list it, or
    it is not built), or None when it can."""
    from nfqproxy.datapath import factory

    if name not in factory.DATAPATHS:
        return f"this nfqproxy has no {name} data path (nfqproxy.datapath.factory.DATAPATHS)"
    if name not in factory.available():
        return f"the {name} data path is unavailable: {factory.unavailable_reason(name)}"
    return None


# --- metadata -----------------------------------------------------------------------------


def _first_line(command: Sequence[str]) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    try:
        result = subprocess.run(
            list(command), capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(repo: Path) -> str:
    """HEAD, with " (dirty)" when tracked files differ from it."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        )

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + (" (dirty)" if dirty else "")


def _available_datapaths() -> list[str]:
    from nfqproxy.datapath import factory

    return factory.available()


def run_metadata(repo: Path) -> dict[str, Any]:
    """What a reader needs to place the figures: the machine, the tools and the code."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 0,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "iptables": _first_line(["iptables", "--version"]),
        "iptables_legacy": _first_line(["iptables-legacy", "--version"]),
        "nft": _first_line(["nft", "--version"]),
        "iperf3": _first_line(["iperf3", "--version"]),
        "python": platform.python_version(),
        "nfqproxy_datapaths": ", ".join(_available_datapaths()),
        "git_commit": git_commit(repo),
    }


METADATA_LABELS = (
    ("date", "date (UTC)"),
    ("cpu_model", "CPU"),
    ("cores", "cores"),
    ("kernel", "kernel"),
    ("iptables", "iptables"),
    ("iptables_legacy", "iptables-legacy"),
    ("nft", "nft"),
    ("iperf3", "iperf3"),
    ("python", "Python"),
    ("nfqproxy_datapaths", "nfqproxy data paths available"),
    ("git_commit", "git commit"),
)


def metadata_markdown(metadata: Mapping[str, Any]) -> list[str]:
    """The metadata as a Markdown table, in a fixed order; keys it does not know last."""
    if not metadata:
        return ["Metadata: not recorded (a run of an older version of the benchmark)."]
    known = dict(METADATA_LABELS)
    lines = ["| | |", "|---|---|"]
    for key in [*known, *(k for k in metadata if k not in known)]:
        if key in metadata:
            lines.append(f"| {known.get(key, key)} | {metadata[key]} |")
    return lines


def wait_for_line(
    path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 10
) -> None:
    """Waits until a process's log says text (a helper's "ready"); raises if it exits first
    or stays silent for timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{path.name}: exited: {path.read_text(errors='replace')}")
        time.sleep(0.05)
    raise TimeoutError(f"{path.name} did not say {text!r}")
