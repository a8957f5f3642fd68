"""Binds a data path to an NFQUEUE queue through NetfilterQueue, inside an asyncio loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from netfilterqueue import NetfilterQueue

from nfqproxy.datapath.fast import FastDatapath
from nfqproxy.datapath.reference import Action, Verdict
from nfqproxy.hooks import MARK_HAIRPIN, MARK_PROXIED, MARK_REJECT

log = logging.getLogger(__name__)

QUEUE_MAX_LEN = 8192  # packets the kernel holds for us before it drops
SOCKET_BUFFER = 8 * 1024 * 1024


class Datapath(Protocol):
    def process(self, raw: bytes) -> Verdict: ...


class QueueBinding:
    """Reads packets from one queue and gives each the data path's verdict."""

    def __init__(self, queue_num: int, datapath: Datapath) -> None:
        self.queue_num = queue_num
        self.datapath = datapath
        self._queue: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_packet(self, packet: Any) -> None:
        try:
            self._give_verdict(packet)
        except Exception:
            # A packet without a verdict would sit in the kernel's queue until it fills.
            log.exception("no verdict for a packet; dropping it")
            packet.drop()

    def _give_verdict(self, packet: Any) -> None:
        verdict = self.datapath.process(packet.get_payload())
        if verdict.action is Action.DROP:
            packet.drop()
            return
        # Keep whatever mark other software set; add ours.
        mark = packet.get_mark()
        if verdict.action is Action.REJECT:
            packet.set_mark(mark | MARK_REJECT)  # the filter-table REJECT rule answers it
        else:
            if verdict.proxied:
                packet.set_mark(mark | MARK_PROXIED | (MARK_HAIRPIN if verdict.hairpin else 0))
            if verdict.payload is not None:
                packet.set_payload(verdict.payload)
        packet.accept()

    def stats(self) -> dict[str, int]:
        return {}  # NetfilterQueue keeps no counters of its own

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        queue = NetfilterQueue()
        try:
            queue.bind(
                self.queue_num, self._on_packet, max_len=QUEUE_MAX_LEN, sock_len=SOCKET_BUFFER
            )
        except OSError as exc:
            raise OSError(
                f"cannot bind NFQUEUE {self.queue_num}: {exc} (is another process bound to it? "
                "Does this process have CAP_NET_ADMIN?)"
            ) from exc
        self._queue, self._loop = queue, loop
        loop.add_reader(queue.get_fd(), self._drain)

    def _drain(self) -> None:
        self._queue.run(block=False)

    def close(self) -> None:
        if self._queue is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._queue.get_fd())
        self._queue.unbind()
        self._queue = None


class FastQueueBinding:
    """The fast path's own queue loop (cext/fastpath.pyx FastQueue): F_GSO, batched reads
    and verdicts, no Python per packet. Python runs once per wake-up of the event loop."""

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

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue.open()
        self._loop = loop
        loop.add_reader(self._queue.fileno, self._queue.drain)

    def stats(self) -> dict[str, int]:
        return self._queue.stats()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._queue.fileno)
            self._loop = None
        self._queue.close()
