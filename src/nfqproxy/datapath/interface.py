"""The data-path contract: what the controller, the queue and the tests may rely on.

An implementation is a Datapath (tables and verdicts) and a QueueBinding (how packets reach
it from NFQUEUE), registered by name in nfqproxy.datapath.factory. Implementations import
the contract modules (verdicts, frontends, flows, marks, maglev, hashing), never each other.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from nfqproxy.datapath.decisions import TraceEvent
from nfqproxy.datapath.flows import FlowRecord
from nfqproxy.datapath.frontends import Frontend, PortChanges, TableKey
from nfqproxy.datapath.verdicts import Verdict
from nfqproxy.model import Snapshot


class Datapath(Protocol):
    def apply(self, snapshot: Snapshot) -> list[str]:
        """Programs the tables to hold exactly the snapshot; returns the names changed."""
        ...

    def apply_changes(self, changes: PortChanges) -> list[str]:
        """Adds, replaces or removes (None) service ports, all or nothing."""
        ...

    def frontend(self, key: TableKey) -> Frontend | None:
        """The frontend programmed for (VIP, protocol number, port), if any."""
        ...

    def process(self, raw: bytes, source: int = 0) -> Verdict:
        """The verdict for one packet; source: the SOURCE_* bits of its mark
        (datapath/marks.py). Never raises."""
        ...

    def expire(self) -> int:
        """Drops expired flows and client affinities; returns the flows dropped."""
        ...

    def flow_records(self, limit: int) -> tuple[list[FlowRecord], int]:
        """Up to limit tracked flows, oldest first where the table knows the order, and
        how many there are in all. May block (the offload path asks conntrack)."""
        ...

    def affinity_entry(
        self, proto: int, client: bytes, vip: bytes, vport: int
    ) -> tuple[bytes, int, float] | None:
        """A client's live sessionAffinity entry for a service port: (backend, its port,
        seconds left), addresses packed; None when it has none. Changes nothing."""
        ...

    def flow_table(self) -> dict[str, object]:
        """The table flow_records reads: its capacity, and the flows it evicted when full
        and expired (those it keeps count of), without walking it."""
        ...

    def service_port_counts(self) -> dict[str, dict[str, int]]:
        """{service port name: {"new_flow": n, and decisions.REFUSALS: n}}, non-zero only:
        what its frontends decided while programmed."""
        ...

    def trace_start(self, size: int) -> None:
        """Records each new flow, reject and drop (decisions.TraceEvent) until trace_stop,
        keeping up to size not yet taken. Until then, tracing costs the packets nothing."""
        ...

    def trace_stop(self) -> None: ...

    def trace_take(self) -> tuple[list[TraceEvent], int]:
        """The decisions recorded since the last call, oldest first, and how many were
        lost since tracing started because they were not taken in time."""
        ...

    def status(self) -> dict[str, object]:
        """Service ports, connection table, session affinity and counters, for status."""
        ...

    @property
    def counters(self) -> dict[str, int]:
        """Verdict counters (verdicts.verdict_counter) and verdicts.EVENT_COUNTERS, the
        non-zero ones only: a name that is missing counts zero."""
        ...


# Packets the kernel holds in a bound queue for us before it drops (every binding asks
# for this length).
QUEUE_MAX_LEN = 8192


class QueueBinding(Protocol):
    def bind(self) -> None:
        """Claims the queue: from now on the kernel holds service packets for us."""
        ...

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts giving verdicts, once the tables are programmed."""
        ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...
