"""The fast path's queue binding: its own queue loop in C (FastQueue in cext/), with F_GSO,
batched reads and verdicts, in a worker thread that never takes the GIL: no Python per
packet, and no packet waits for a turn of the event loop."""

from __future__ import annotations

import asyncio

from nfqproxy.datapath.fast.datapath import FastDatapath
from nfqproxy.datapath.interface import QUEUE_MAX_LEN
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.datapath.workers import QueueWorkers


class FastQueueBinding:
    """One queue: replies must reach the worker that holds their flow, so the fast path
    cannot spread a service's packets over several queues."""

    def __init__(
        self, queue_num: int, datapath: FastDatapath, marks: MarkLayout, fail_open: bool = False
    ) -> None:
        from nfqproxy._fastpath import FastQueue

        self.queue_num = queue_num
        queue = FastQueue(
            datapath.core,
            queue_num,
            QUEUE_MAX_LEN,
            marks.mask,
            marks.proxied,
            marks.reject,
            marks.masquerade,
            fail_open,
            source_marks=(marks.source_pod, marks.source_off_cluster, marks.source_node),
        )
        self._workers = QueueWorkers([queue])

    def bind(self) -> None:
        self._workers.bind()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._workers.start()

    def stats(self) -> dict[str, int]:
        return self._workers.stats()

    def close(self) -> None:
        self._workers.close()
