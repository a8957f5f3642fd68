"""The offload path's state in the kernel, as its data path sees it (KernelState): the
DNAT map (nft.py) and the connections conntrack holds for it (conntrack.py), found by the
proxied bit of their mark."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.datapath.offload.conntrack import ConntrackTable, TrackedFlow
from nfqproxy.datapath.offload.nft import BackendMap, Element

T = TypeVar("T")


# The niceness of the conntrack thread. A filtered flush walks the whole conntrack table
# in the kernel, in this thread's system call (15-20 ms at 40k entries), while the next
# sync may be running on a node's other core. Linux schedules threads by their own nice,
# so the walk gives way. Measured at N = 10000, 20 changes a series, 4 series each: max
# 10-14 ms with it, 12-18 ms without; the medians overlap, so it is a small help at best.
BACKGROUND_NICE = 10


def _run_behind_the_proxy() -> None:
    # Raising one's nice needs no privilege; a sandbox that forbids the call only costs
    # the help.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


class OffloadKernel:
    def __init__(self, marks: MarkLayout, families: Collection[int] = (4,)) -> None:
        """families: the IP versions served (of the service ranges): each gets its DNAT
        map, and conntrack is read and flushed in those only."""
        self.marks = marks
        self.map = BackendMap(marks, families)
        self.conntrack = ConntrackTable(families)
        # conntrack.py runs pyroute2's asyncio socket on a loop of its own, which cannot
        # run inside the proxy's: its calls go to this thread, and are waited for.
        self._thread = ThreadPoolExecutor(
            1, thread_name_prefix="conntrack", initializer=_run_behind_the_proxy
        )

    def _call(self, function: Callable[[], T]) -> T:
        return self._thread.submit(function).result()

    def install(self) -> dict[int, Element]:
        return self.map.install()

    def update_map(self, added: dict[int, Element], removed: list[int]) -> None:
        self.map.update(added, removed)

    def tracked(self, marks: list[int]) -> list[TrackedFlow]:
        """The connections our verdicts sent to these backends (by mark)."""
        proxied, mask = self.marks.proxied, self.marks.id_mask | self.marks.proxied
        return self._call(
            lambda: [f for m in marks for f in self.conntrack.flows(m | proxied, mask)]
        )

    def all_tracked(self, limit: int) -> list[TrackedFlow]:
        """Up to limit connections our verdicts sent to a backend: one dump on the
        proxied bit."""
        proxied = self.marks.proxied
        return self._call(lambda: self.conntrack.flows(proxied, proxied, limit))

    def forget(self, marks: list[int]) -> None:
        """Deletes the connections of these backend marks."""
        mask = self.marks.id_mask | self.marks.proxied
        proxied = self.marks.proxied

        def delete_each() -> None:
            for mark in marks:
                self.conntrack.delete(mark | proxied, mask)

        self._call(delete_each)

    def open_flows(self, limit: int) -> dict[int, int]:
        """Open connections per backend id, counting at most limit of them (reading each
        costs pyroute2 about 0.1 ms: a busy node's count is a floor)."""
        marks = self.marks
        counts = self._call(
            lambda: self.conntrack.count_by_mark(marks.proxied, marks.proxied, marks.id_mask, limit)
        )
        return {self.marks.backend_id(mark): n for mark, n in counts.items()}

    def close(self) -> None:
        self.map.close()
        self._call(self.conntrack.close)
        self._thread.shutdown()


CONNTRACK_STATS = Path("/proc/net/stat/nf_conntrack")  # this namespace's, a row per CPU
CONNTRACK_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")


def conntrack_fill(stats: Path = CONNTRACK_STATS, limit: Path = CONNTRACK_MAX) -> dict[str, object]:
    """Conntrack's table as `nfqproxy flows` reports a connection table's: its capacity,
    the entries it evicted when full (early_drop) and the new ones it dropped (drop),
    summed over CPUs. What cannot be read is left out."""
    fill: dict[str, object] = {"held_by": "kernel conntrack"}
    try:
        fill["capacity"] = int(limit.read_text())
        header, *rows = stats.read_text().split("\n")
    except (OSError, ValueError):
        return fill
    columns = header.split()
    for name, key in (("early_drop", "evicted"), ("drop", "dropped_when_full")):
        if name in columns:
            at = columns.index(name)
            fill[key] = sum(int(row.split()[at], 16) for row in rows if row.strip())
    return fill
