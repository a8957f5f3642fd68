"""The offload path's queue binding: N queues (the hooks spread first packets over them
with --queue-balance and --queue-cpu-fanout), one compiled worker thread each, all deciding
on the data path's one set of tables. No reply reaches a queue, so no steering is needed."""

from __future__ import annotations

import asyncio

from nfqproxy.datapath.interface import QUEUE_MAX_LEN
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.datapath.offload.datapath import OffloadDatapath
from nfqproxy.datapath.offload.kernel import OffloadKernel
from nfqproxy.datapath.workers import QueueWorkers


class OffloadQueueBinding:
    def __init__(
        self,
        queue_num: int,
        datapath: OffloadDatapath,
        marks: MarkLayout,
        queues: int = 1,
        fail_open: bool = False,
    ) -> None:
        from nfqproxy._fastpath import FastQueue

        if queues < 1:
            raise ValueError(f"--queues must be at least 1, got {queues}")
        if queue_num + queues - 1 > 65535:
            raise ValueError(f"queues {queue_num}-{queue_num + queues - 1} go past 65535")
        self.queue_num = queue_num
        self.datapath = datapath
        self.marks = marks
        self.kernel: OffloadKernel | None = None
        self._workers = QueueWorkers(
            [
                FastQueue(
                    datapath.core,
                    queue_num + i,
                    QUEUE_MAX_LEN,
                    marks.mask,
                    marks.proxied,
                    marks.reject,
                    marks.masquerade,
                    fail_open,
                    True,  # offload: first packets, answered with a mark
                    (marks.source_pod, marks.source_off_cluster, marks.source_node),
                )
                for i in range(queues)
            ]
        )

    def bind(self) -> None:
        """Claims the queues, and the kernel's map and flows, before the first sync."""
        self._workers.bind()
        try:
            self.kernel = OffloadKernel(self.marks, self.datapath.families)
            self.datapath.attach(self.kernel)
        except Exception:
            self.close()
            raise

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._workers.start()

    def stats(self) -> dict[str, int]:
        return self._workers.stats()

    def close(self) -> None:
        self._workers.close()
        if self.kernel is not None:
            # Removed backends' connections are deleted before the kernel state closes.
            self.datapath.settled(5.0)
            self.kernel.close()
            self.kernel = None
