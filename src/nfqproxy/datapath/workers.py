"""Queue worker threads for the compiled data paths: one per NFQUEUE queue, each running the
compiled loop (FastQueue.run) with the GIL released, so that decisions never wait for the
event loop and several queues use several cores. The tables they read are the data path's,
guarded by the core's lock (cext/includes/threads.pxd)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The kernel's own view of each queue: packets waiting, and those it dropped because the
# queue was full (queue_dropped) or because our socket could not take them (user_dropped).
KERNEL_QUEUE_STATS = Path("/proc/net/netfilter/nfnetlink_queue")


def kernel_queue_stats(queues: set[int], path: Path = KERNEL_QUEUE_STATS) -> dict[str, int]:
    """Sums of the kernel's counters over the queues given: waiting, queue_dropped,
    user_dropped. Empty when the file cannot be read (no queue bound yet)."""
    totals = {"kernel_waiting": 0, "kernel_queue_dropped": 0, "kernel_user_dropped": 0}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    found = False
    for line in lines:
        # queue, peer portid, waiting, copy mode, copy range, queue_dropped, user_dropped, ...
        fields = line.split()
        if len(fields) >= 7 and fields[0].isdigit() and int(fields[0]) in queues:
            found = True
            totals["kernel_waiting"] += int(fields[2])
            totals["kernel_queue_dropped"] += int(fields[5])
            totals["kernel_user_dropped"] += int(fields[6])
    return totals if found else {}


class QueueWorkers:
    """Binds each queue, then runs one thread per queue until close()."""

    def __init__(self, queues: list[Any]) -> None:
        self.queues = queues  # FastQueue objects (nfqproxy._fastpath)
        self._threads: list[threading.Thread] = []
        self._bound: list[Any] = []

    def bind(self) -> None:
        """Claims every queue, or none: a queue already taken releases the others."""
        try:
            for queue in self.queues:
                queue.open()
                self._bound.append(queue)
        except OSError:
            self.close()
            raise

    def start(self) -> None:
        if self._threads or not self._bound:
            return
        for queue in self._bound:
            thread = threading.Thread(
                target=queue.run, name=f"nfqueue-{queue.queue_num}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info("%d queue worker thread(s) started", len(self._threads))

    def stats(self) -> dict[str, int]:
        """The compiled loops' counters, summed over the queues, and the kernel's."""
        totals: dict[str, int] = {}
        for queue in self.queues:
            for name, value in queue.stats().items():
                if name == "last_refusal_errno":
                    totals[name] = max(totals.get(name, 0), value)
                else:
                    totals[name] = totals.get(name, 0) + value
        totals["queues"] = len(self.queues)
        totals.update(kernel_queue_stats({q.queue_num for q in self.queues}))
        return totals

    def close(self) -> None:
        for queue in self._bound:
            queue.stop()
        for thread in self._threads:
            thread.join()
        self._threads = []
        for queue in self._bound:
            queue.close()
        self._bound = []
