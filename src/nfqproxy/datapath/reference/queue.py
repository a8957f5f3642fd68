"""The reference queue binding: NetfilterQueue reads each packet, Python gives its verdict."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import Any

from netfilterqueue import NetfilterQueue

from nfqproxy.datapath.interface import QUEUE_MAX_LEN, Datapath
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.datapath.verdicts import Action

log = logging.getLogger(__name__)

SOCKET_BUFFER = 8 * 1024 * 1024
# Packets the reference path handles per wake-up of the event loop: 1-2.5 ms of work at
# its 25-50k packets per second. Under a flood the socket never runs dry, so an unbounded
# read would keep signals, syncs, /healthz and the status file waiting for the flood to end.
PACKETS_PER_WAKEUP = 64


class _BoundedSocket:
    """The queue's socket as NetfilterQueue.run_socket reads it: at most `left` packets,
    then EAGAIN, which ends run_socket as an empty socket would."""

    def __init__(self, fd: int) -> None:
        # A duplicate: closing it must not close NetfilterQueue's own descriptor.
        self.sock = socket.socket(fileno=os.dup(fd))
        self.left = 0

    def recv(self, size: int) -> bytes:
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "packet budget of this wake-up spent")
        self.left -= 1
        return self.sock.recv(size, socket.MSG_DONTWAIT)

    def close(self) -> None:
        self.sock.close()


class NetfilterQueueBinding:
    """Reads packets from one queue and gives each the data path's verdict.

    bind() claims the queue: from then on the kernel holds service packets for us instead
    of dropping them. start() begins reading them, once the tables are programmed."""

    def __init__(self, queue_num: int, datapath: Datapath, marks: MarkLayout) -> None:
        self.queue_num = queue_num
        self.datapath = datapath
        self.marks = marks
        self._queue: Any = None
        self._socket: _BoundedSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_packet(self, packet: Any) -> None:
        try:
            self._give_verdict(packet)
        except Exception:
            # A packet without a verdict would sit in the kernel's queue until it fills.
            log.exception("no verdict for a packet; dropping it")
            packet.drop()

    def _give_verdict(self, packet: Any) -> None:
        verdict = self.datapath.process(
            packet.get_payload(), self.marks.source_bits(packet.get_mark())
        )
        if verdict.action is Action.DROP:
            packet.drop()
            return
        # Keep the bits other software set, outside our mask; set ours anew.
        marks = self.marks
        mark = packet.get_mark() & ~marks.mask
        if verdict.action is Action.REJECT:
            packet.set_mark(mark | marks.reject)  # the filter-table REJECT rule answers it
        else:
            if verdict.proxied:
                packet.set_mark(
                    mark | marks.proxied | (marks.masquerade if verdict.masquerade else 0)
                )
            if verdict.payload is not None:
                packet.set_payload(verdict.payload)
        packet.accept()

    def stats(self) -> dict[str, int]:
        return {}  # NetfilterQueue keeps no counters of its own

    def bind(self) -> None:
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
        self._queue = queue
        self._socket = _BoundedSocket(queue.get_fd())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._queue is None or self._loop is not None:
            return
        self._loop = loop
        loop.add_reader(self._queue.get_fd(), self._drain)

    def _drain(self) -> None:
        assert self._socket is not None
        self._socket.left = PACKETS_PER_WAKEUP
        self._queue.run_socket(self._socket)  # the reader is called again while packets wait

    def close(self) -> None:
        if self._queue is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._queue.get_fd())
            self._loop = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._queue.unbind()
        self._queue = None
