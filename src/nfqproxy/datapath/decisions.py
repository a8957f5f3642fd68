"""What the data paths record of their decisions, for operators: the trace of each new
flow, reject and drop (`nfqproxy trace`), and per service port counts of new and refused
flows (the per service port metrics). Both are part of the data-path contract.

Tracing is off until someone traces: the fast and offload paths then allocate a ring in C,
the reference path a deque, and the packet path tests only whether it is there.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nfqproxy.datapath.frontends import Frontend, TableKey

# The reasons a service port counts beside new_flow: the refusals made for a frontend
# (the fast path's REFUSE_* order). no_service and port_not_served have no service port.
REFUSALS: tuple[str, ...] = ("no_endpoints", "no_local_endpoints", "backend_removed")


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One decision: a new flow with its backend, or a reject or a drop with its reason.
    The addresses are None when the packet was refused before its ports were read."""

    time: float  # the data path's clock (monotonic seconds)
    action: str  # verdicts.Action's value
    reason: str  # one of verdicts.REASONS
    protocol: int  # 0 when the tuple is unknown
    client: bytes | None
    client_port: int
    destination: bytes | None
    port: int
    backend: bytes | None  # a new flow's
    backend_port: int


# Refusals made after the packet's ports were read: their trace carries its tuple. The
# others came before (a malformed packet), or are about the flow inside an ICMP error.
_TUPLE_READ = frozenset(
    {"no_service", "port_not_served", "no_endpoints", "no_local_endpoints", "backend_removed",
     "unknown_reply"}
)  # fmt: skip


def tuple_is_read(reason: str) -> bool:
    """Whether a refusal with this reason knows its packet's tuple (the C reason_has_tuple)."""
    return reason in _TUPLE_READ


class TraceRing:
    """The reference path's trace: decisions kept until taken, up to a size (as the C
    ring: when full, new events are counted lost, not kept)."""

    def __init__(self) -> None:
        self._events: deque[TraceEvent] | None = None
        self._size = 0
        self.lost = 0

    @property
    def on(self) -> bool:
        return self._events is not None

    def start(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a trace ring of at least 1 event, not {size}")
        if self._events is None:
            self._events, self._size, self.lost = deque(), size, 0

    def stop(self) -> None:
        self._events = None

    def record(self, event: TraceEvent) -> None:
        if self._events is None:
            return
        if len(self._events) >= self._size:
            self.lost += 1
        else:
            self._events.append(event)

    def take(self) -> tuple[list[TraceEvent], int]:
        if self._events is None:
            return [], 0
        events = list(self._events)
        self._events.clear()
        return events, self.lost


class PortCounts:
    """New and refused flows by frontend, read by service port name. A service port has
    several frontends (its ClusterIPs, NodePorts, external and load-balancer addresses, a
    Local service's cluster variant), which come and go on their own: a frontend that
    goes hands its counts to its name, which keeps them while any frontend of that name
    remains. So a service port's counters never fall while it exists (Prometheus would
    read a fall as a reset), and go with it."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[TableKey, str]] = Counter()
        self._retired: Counter[tuple[str, str]] = Counter()  # (name, reason)

    def add(self, key: TableKey, reason: str, count: int = 1) -> None:
        if count:
            self._counts[(key, reason)] += count

    def retire(self, names: Mapping[TableKey, str], remaining: Mapping[TableKey, Frontend]) -> None:
        """Frontends removed, or now of another service port (names: their old names):
        their counts go to those names, kept while a remaining frontend bears the name."""
        if not names:
            return
        for key, reason in [entry for entry in self._counts if entry[0] in names]:
            self._retired[(names[key], reason)] += self._counts.pop((key, reason))
        gone = set(names.values()) - {f.name for f in remaining.values()}
        for entry in [entry for entry in self._retired if entry[0] in gone]:
            del self._retired[entry]

    def by_service_port(
        self, frontends: Mapping[TableKey, Frontend], extra: PortCounts | None = None
    ) -> dict[str, dict[str, int]]:
        """{service port name: {"new_flow": n, "no_endpoints": n, ...}}, non-zero only,
        with extra's counts (not folded in yet) added."""
        totals: dict[str, Counter[str]] = {}
        both = self._counts + extra._counts if extra else self._counts
        for (key, reason), count in both.items():
            frontend = frontends.get(key)
            if frontend is not None and count:
                totals.setdefault(frontend.name, Counter())[reason] += count
        for (name, reason), count in self._retired.items():
            totals.setdefault(name, Counter())[reason] += count
        return {name: dict(sorted(counts.items())) for name, counts in sorted(totals.items())}


def retired_names(
    programmed: Mapping[TableKey, Frontend],
    removed: Iterable[TableKey],
    built: Mapping[TableKey, Frontend],
) -> dict[TableKey, str]:
    """The old names of the frontends a plan removes or gives to another service port."""
    names = {key: programmed[key].name for key in removed if key in programmed}
    for key, frontend in built.items():
        old = programmed.get(key)
        if old is not None and old.name != frontend.name:
            names[key] = old.name
    return names
