"""The fast path's queue binding: its own queue loop in C (FastQueue in cext/), with F_GSO,
batched reads and verdicts and no Python per packet."""

from __future__ import annotations

import asyncio

from nfqproxy.datapath.fast.datapath import FastDatapath
from nfqproxy.datapath.interface import QUEUE_MAX_LEN
from nfqproxy.datapath.marks import MARK_HAIRPIN, MARK_PROXIED, MARK_REJECT


class FastQueueBinding:
    """Python runs here once per wake-up of the event loop, never per packet."""

    def __init__(self, queue_num: int, datapath: FastDatapath, fail_open: bool = False) -> None:
        from nfqproxy._fastpath import FastQueue

        self.queue_num = queue_num
        self._queue = FastQueue(
            datapath.core,
            queue_num,
            QUEUE_MAX_LEN,
            MARK_PROXIED,
            MARK_REJECT,
            MARK_HAIRPIN,
            fail_open,
        )
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> None:
        self._queue.open()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._queue.fileno < 0 or self._loop is not None:
            return
        self._loop = loop
        loop.add_reader(self._queue.fileno, self._queue.drain)

    def stats(self) -> dict[str, int]:
        return self._queue.stats()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._queue.fileno)
            self._loop = None
        self._queue.close()
