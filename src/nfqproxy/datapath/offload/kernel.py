"""The offload path's state in the kernel, as its data path sees it (KernelState): the
DNAT map (nft.py) and the connections conntrack holds for it (conntrack.py), found by the
proxied bit of their mark."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.datapath.offload.conntrack import ConntrackTable, TrackedFlow
from nfqproxy.datapath.offload.nft import BackendMap, Element

T = TypeVar("T")


class OffloadKernel:
    def __init__(self, marks: MarkLayout) -> None:
        self.marks = marks
        self.map = BackendMap(marks)
        self.conntrack = ConntrackTable()
        # conntrack.py runs pyroute2's asyncio socket on a loop of its own, which cannot
        # run inside the proxy's: its calls go to this thread, and are waited for.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="conntrack")

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

    def forget(self, marks: list[int]) -> int:
        """Deletes the connections of these backend marks; the count deleted."""
        mask = self.marks.id_mask | self.marks.proxied
        proxied = self.marks.proxied
        return self._call(
            lambda: sum(self.conntrack.delete(mark | proxied, mask) for mark in marks)
        )

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
