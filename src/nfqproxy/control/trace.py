"""`nfqproxy trace` in the proxy: while at least one client traces, the data path records
its decisions (datapath/decisions.py), and the hub hands them to every tracer whose
filters they pass. When the last tracer leaves, the data path stops recording and frees
its ring: tracing costs nothing while nobody traces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nfqproxy.datapath.decisions import TraceEvent
from nfqproxy.datapath.flows import endpoint_text
from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.verdicts import REASONS
from nfqproxy.fields import PROTOCOLS

log = logging.getLogger(__name__)

RING_SIZE = 65536  # decisions the data path keeps between two polls (80 B each in C)
POLL_INTERVAL = 0.1  # seconds between polls: a trace line shows within about this
BACKLOG = 10_000  # decisions waiting for one slow tracer before it loses some
MAX_TRACERS = 8
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}


class TraceRefused(ValueError):
    """A trace request the proxy cannot serve: the message says why."""


@dataclass(frozen=True)
class TraceFilter:
    service: str | None = None  # namespace/name, or namespace/name:port
    reasons: frozenset[str] = frozenset()  # empty: every reason

    @classmethod
    def of(cls, service: str | None, reasons: Iterable[str]) -> TraceFilter:
        unknown = sorted(set(reasons) - set(REASONS))
        if unknown:
            raise TraceRefused(f"unknown reason {unknown[0][:40]!r}; reasons: {', '.join(REASONS)}")
        return cls(service or None, frozenset(reasons))

    def passes(self, line: dict[str, Any]) -> bool:
        if self.reasons and line["reason"] not in self.reasons:
            return False
        name = line["service"]
        return not self.service or (
            name is not None and (name == self.service or name.startswith(self.service + ":"))
        )


class Tracer:
    """One client's stream: the lines its filter passed, not yet written."""

    def __init__(self, match: TraceFilter) -> None:
        self.match = match
        self.pending: deque[dict[str, Any]] = deque()
        self.ready = asyncio.Event()
        self.lost = 0  # lines this tracer could not be given (its backlog, or the ring)
        self.closed = False

    def offer(self, line: dict[str, Any]) -> None:
        if len(self.pending) >= BACKLOG:
            self.lost += 1
        else:
            self.pending.append(line)
        self.ready.set()

    def take(self) -> list[dict[str, Any]]:
        lines = list(self.pending)
        self.pending.clear()
        self.ready.clear()
        return lines


class TraceHub:
    """The tracers of one proxy, and the poll that feeds them from its data path."""

    def __init__(self, datapath: Datapath) -> None:
        self.datapath = datapath
        self.tracers: set[Tracer] = set()
        self._poll: asyncio.Task[None] | None = None
        self._lost = 0  # the data path's count, as last seen
        self._closed = False  # the proxy is stopping: no new tracer

    def subscribe(self, match: TraceFilter) -> Tracer:
        if self._closed:
            raise TraceRefused("the proxy is stopping")
        if len(self.tracers) >= MAX_TRACERS:
            raise TraceRefused(f"{MAX_TRACERS} clients trace already; try again later")
        if not self.tracers:
            self.datapath.trace_start(RING_SIZE)
            self._lost = 0
            self._poll = asyncio.get_running_loop().create_task(self._feed())
            log.info("tracing decisions")
        tracer = Tracer(match)
        self.tracers.add(tracer)
        return tracer

    def unsubscribe(self, tracer: Tracer) -> None:
        if tracer not in self.tracers:  # the hub closed meanwhile, and stopped already
            return
        self.tracers.discard(tracer)
        if not self.tracers:
            self._stop()
            log.info("tracing stopped: nobody traces")

    def close(self) -> None:
        """The proxy stops: every tracer's stream ends, and no new one starts."""
        self._closed = True
        for tracer in self.tracers:
            tracer.closed = True
            tracer.ready.set()
        self.tracers.clear()
        self._stop()

    def _stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        self.datapath.trace_stop()

    async def _feed(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                self.flush()
            except Exception as exc:  # a bug: tracing must never stop the proxy
                log.warning("tracing failed: %s", exc, exc_info=True)

    def flush(self) -> None:
        """Hands the decisions recorded since the last flush to the tracers."""
        events, lost = self.datapath.trace_take()
        if lost > self._lost:
            for tracer in self.tracers:
                tracer.lost += lost - self._lost
                tracer.ready.set()
            self._lost = lost
        for event in events:
            line = self.describe(event)
            for tracer in self.tracers:
                if tracer.match.passes(line):
                    tracer.offer(line)

    def describe(self, event: TraceEvent) -> dict[str, Any]:
        """A decision as a trace line: its wall-clock time, its verdict, the packet's
        addresses, its service port's name and the backend a new flow got."""
        name = None
        if event.destination is not None:
            frontend = self.datapath.frontend((event.destination, event.protocol, event.port))
            name = frontend.name if frontend else None
        known = event.client is not None and event.destination is not None
        return {
            "time": time.time() - (time.monotonic() - event.time),
            "action": event.action,
            "reason": event.reason,
            "protocol": PROTOCOL_NAMES.get(event.protocol) if known else None,
            "client": endpoint_text(event.client, event.client_port) if event.client else None,
            "destination": (
                endpoint_text(event.destination, event.port) if event.destination else None
            ),
            "service": name,
            "backend": (
                endpoint_text(event.backend, event.backend_port) if event.backend else None
            ),
        }


async def stream(
    tracer: Tracer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Writes the tracer's lines as they come, until the client goes away (its end of the
    socket closes) or the proxy stops. A line {"lost": n} says how many it missed so far."""
    gone = asyncio.ensure_future(reader.read(1))  # b"" (or anything): the client is done
    ready: asyncio.Future[Any] | None = None
    told_lost = 0
    try:
        while not tracer.closed:
            ready = asyncio.ensure_future(tracer.ready.wait())
            done, _ = await asyncio.wait({ready, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                return
            lines = [json.dumps({"event": line}) for line in tracer.take()]
            if tracer.lost > told_lost:
                told_lost = tracer.lost
                lines.append(json.dumps({"lost": told_lost}))
            if lines:
                writer.write(("\n".join(lines) + "\n").encode())
                await asyncio.wait_for(writer.drain(), 10.0)
    finally:
        for task in (ready, gone):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
