"""The offload data path: the compiled core decides each flow's first packet by the same
rules as the fast path (Maglev, session affinity, topology, internalTrafficPolicy,
terminating fallback, rejects, hairpin); the verdict's mark names the backend; the kernel's
DNAT map (offload/nft.py) and conntrack carry every later packet, both ways.

Its kernel state (the map, conntrack) is attached by its queue binding; without it (unit
tests, benchmarks of the decision alone) the tables and verdicts work the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from nfqproxy import defaults
from nfqproxy.datapath.compiled import CompiledTables, DecisionsOfTables, require_compiled
from nfqproxy.datapath.flows import FlowRecord, Timeouts, affinity_capacity, endpoint_text
from nfqproxy.datapath.frontends import (
    Frontend,
    PortChanges,
    TableKey,
    plan_changes,
    snapshot_changes,
    update_ports,
)
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.datapath.offload.backends import Assignment, BackendIds, present
from nfqproxy.datapath.offload.conntrack import TrackedFlow
from nfqproxy.datapath.offload.kernel import conntrack_fill
from nfqproxy.datapath.offload.nft import Element
from nfqproxy.datapath.verdicts import Action, Verdict
from nfqproxy.model import IPNetwork, ServicePort, ServicePortKey, Snapshot

log = logging.getLogger(__name__)


class KernelState(Protocol):
    """What the binding attaches: the DNAT map and conntrack (offload/kernel.py)."""

    marks: MarkLayout

    def install(self) -> dict[int, Element]: ...
    def update_map(self, added: dict[int, Element], removed: list[int]) -> None: ...
    def tracked(self, marks: list[int]) -> Sequence[TrackedFlow]: ...
    def all_tracked(self, limit: int) -> Sequence[TrackedFlow]: ...
    def forget(self, marks: list[int]) -> None: ...
    def open_flows(self, limit: int) -> dict[int, int]: ...


# Open flows per backend: counted in the background at most this often, reading at most
# this many connections (pyroute2 reads about 10k a second, holding the GIL meanwhile: a
# bigger count would hold syncs back).
OPEN_FLOWS_EVERY = 60.0
OPEN_FLOWS_LIMIT = 5_000


class OffloadDatapath(DecisionsOfTables):
    def __init__(
        self,
        service_cidrs: Iterable[IPNetwork],
        capacity: int = defaults.FLOW_CAPACITY,
        timeouts: Timeouts | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        require_compiled("offload")
        ranges = list(service_cidrs)
        # The IP versions served: each gets its DNAT map (offload/nft.py), and conntrack is
        # read in those only. IPv4 when no range is given, as the hooks do.
        self.families = frozenset(c.version for c in ranges) or frozenset({4})
        # Conntrack holds the flows: the core's own flow table is never used, so it gets one
        # entry; session affinity keeps the share of capacity it has on the fast path.
        self.tables = CompiledTables(ranges, 1, timeouts, seed, affinity_capacity(capacity))
        self.core = self.tables.core
        self.capacity = capacity
        self.seed = seed
        self.clock = clock
        self.ids = BackendIds(MarkLayout())
        self.kernel: KernelState | None = None
        self._ports: dict[ServicePortKey, ServicePort] = {}
        self._first_sync = False  # after attach: adopt, restore affinity, forget the rest
        # Backends that left, settled in the background: their connections deleted, then
        # their map elements, then their ids released. A sync never waits for conntrack
        # (each delete walks the whole table: hundreds of ms on a busy node).
        self._pending = threading.Lock()
        self._to_forget: list[int] = []  # marks whose flows still wait to be deleted
        self._to_unmap: list[int] = []  # marks whose map elements wait to be removed
        self._to_release: list[int] = []  # ids free once the two above are done
        self._settler: ThreadPoolExecutor | None = None
        self._settling = False
        self._open_flows: tuple[float, dict[int, int]] = (-OPEN_FLOWS_EVERY, {})
        self._counting: threading.Thread | None = None

    def attach(self, kernel: KernelState) -> None:
        """Takes over the map a previous process left, before the first sync: each element
        names its backend and service port, and the ids of those still present stay theirs
        (their connections carry them in their marks)."""
        self.kernel = kernel
        self.ids = BackendIds(kernel.marks)
        adopted: dict[Assignment, int] = {}
        for mark, (backend, owner) in kernel.install().items():
            backend_id = kernel.marks.backend_id(mark)
            if backend_id and kernel.marks.backend_mark(backend_id) == mark and owner[2]:
                adopted[(owner, backend)] = backend_id
            else:
                self._to_unmap.append(mark)
        self.ids.adopt(adopted)
        self._settler = ThreadPoolExecutor(1, thread_name_prefix="offload-settle")
        self._first_sync = True
        log.info("offload: %d backend ids adopted from the map", len(adopted))

    @property
    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.core.counters()
        return counters

    def apply(self, snapshot: Snapshot) -> list[str]:
        return self.apply_changes(snapshot_changes(self._ports, snapshot))

    def apply_changes(self, changes: PortChanges) -> list[str]:
        """All or nothing up to the tables; deleting flows and map elements afterwards is
        retried until it succeeds (expire() tries again)."""
        plan = plan_changes(self._ports, changes, self.seed)
        frontends = self.tables.frontends
        old = {key: frontends.get(key) for key in [*plan.removed, *plan.built]}
        new: dict[TableKey, Frontend | None] = {key: None for key in plan.removed}
        new.update(plan.built)
        ids = self.ids.plan(old, new)
        marks = self.ids.marks
        if self.kernel is not None and ids.added:
            # Into the map first: a worker may choose these backends once the tables change.
            added = {marks.backend_mark(i): (b, key) for (key, b), i in ids.added.items()}
            self.kernel.update_map(added, [])
        self.ids.commit(ids)
        with self.core.hold():
            self.tables.program(plan, lambda key, f: [self.ids.mark((key, b)) for b in present(f)])
            update_ports(self._ports, changes)
        first_sync, self._first_sync = self._first_sync, False
        gone = {**ids.leaving, **(self.ids.release_unplaced() if first_sync else {})}
        moved = (*gone.values(), *ids.unchosen_udp.values())
        with self._pending:
            self._to_forget += [marks.backend_mark(i) for i in moved]
            self._to_unmap += [marks.backend_mark(i) for i in gone.values()]
            self._to_release += list(gone.values())
        if first_sync:
            self._restore_affinity()
        self._schedule_settle()
        return plan.names

    def _restore_affinity(self) -> None:
        """Clients keep their backend across a restart: rebuilt from the connections of
        the backends of service ports with session affinity (a filtered dump each)."""
        if self.kernel is None:
            return
        wanted = [
            self.ids.mark((key, backend))
            for key, frontend in self.tables.frontends.items()
            if frontend.affinity_seconds
            for backend in frontend.backends
        ]
        try:
            tracked = self.kernel.tracked(wanted) if wanted else []
        except Exception as exc:
            log.error("offload: cannot read connections back for session affinity: %s", exc)
            return
        expires = self.clock()
        for flow in tracked:
            frontend = self.tables.frontends.get((flow.vip, flow.proto, flow.vport))
            backend = (flow.backend_ip, flow.backend_port)
            if frontend and frontend.affinity_seconds and backend in frontend.backends:
                self.core.remember_affinity(
                    flow.proto,
                    flow.client_ip,
                    flow.vip,
                    flow.vport,
                    *backend,
                    expires + frontend.affinity_seconds,
                )

    def _work_pending(self) -> bool:
        """Whether removed backends wait to be settled; call with self._pending held."""
        return bool(self._to_forget or self._to_unmap or self._to_release)

    def _schedule_settle(self) -> None:
        with self._pending:
            if not self._work_pending() or self._settling:
                return
            if self._settler is None:  # no kernel attached (unit tests): nothing to delete
                self._to_forget, self._to_unmap = [], []
                released, self._to_release = self._to_release, []
                self.ids.release(released)
                return
            self._settling = True
        self._settler.submit(self._settle)

    def _settle(self) -> None:
        """Deletes the flows of backends that left (UDP moves at once; TCP's next packet
        is NEW and gets a reset), then their map elements, then frees their ids. On the
        settling thread; what fails is kept and tried again (expire() reschedules)."""
        with self._pending:
            forget, self._to_forget = sorted(set(self._to_forget)), []
            unmap, self._to_unmap = set(self._to_unmap), []
            release, self._to_release = self._to_release, []
        try:
            kernel = self.kernel
            assert kernel is not None
            if forget:
                kernel.forget(forget)
            if unmap:
                backend_id = self.ids.marks.backend_id
                kernel.update_map({}, [m for m in unmap if not self.ids.in_use(backend_id(m))])
            self.ids.release(release)
        except Exception as exc:
            log.error("offload: cannot delete removed backends' flows or map elements: %s", exc)
            with self._pending:
                self._to_forget += forget
                self._to_unmap += unmap
                self._to_release += release
        finally:
            with self._pending:
                self._settling = False

    def removals_pending(self) -> int:
        with self._pending:
            return len(self._to_forget) + int(self._settling)

    def settled(self, timeout: float = 10.0) -> bool:
        """Waits until no removed backend waits to be settled (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._pending:
                if not (self._settling or self._work_pending()):
                    return True
            time.sleep(0.01)
        return False

    def frontend(self, key: TableKey) -> Frontend | None:
        return self.tables.frontends.get(key)

    def process(self, raw: bytes, source: int = 0) -> Verdict:
        """The verdict for a flow's first packet. ACCEPT carries no payload: the packet goes
        back as it came, and the mark (proxied) sends it through the DNAT map."""
        action, reason, _mark, proxied, masquerade = self.core.decide_first(
            raw, self.clock(), source
        )
        return Verdict(Action(action), reason, None, proxied, masquerade)

    def expire(self) -> int:
        self._schedule_settle()
        self.core.expire(self.clock())
        return 0  # conntrack expires the flows

    def __len__(self) -> int:
        return sum(self.open_flows().values())

    def flow_table(self) -> dict[str, object]:
        return conntrack_fill()

    def flow_records(self, limit: int) -> tuple[list[FlowRecord], int]:
        """The connections conntrack holds for us (a dump filtered on the proxied bit):
        their state is conntrack's, their expiry its timeout."""
        if self.kernel is None:
            return [], 0
        tracked = self.kernel.all_tracked(limit)
        names = self.ids.owners
        records = []
        wall = time.time()
        for f in tracked:
            owner = names.get(self.kernel.marks.backend_id(f.mark))
            frontend = self.tables.frontends.get(owner[0]) if owner else None
            name = frontend.name if frontend else "?"
            age = None if f.started is None else max(0.0, wall - f.started)
            records.append(FlowRecord.of(f, name, "conntrack", float(f.timeout), age))
        # The total as last counted in the background (open_flows), at least those read.
        return records, max(len(records), sum(self.open_flows().values()))

    def open_flows(self) -> dict[int, int]:
        """Open flows per backend id, from conntrack (a dump filtered on our mark), as last
        counted: a count starts in the background when the last is OPEN_FLOWS_EVERY old,
        so that a status write never waits for one."""
        if self.kernel is None:
            return {}
        taken, counts = self._open_flows
        stale = time.monotonic() - taken >= OPEN_FLOWS_EVERY
        if stale and (self._counting is None or not self._counting.is_alive()):
            self._counting = threading.Thread(
                target=self._count_open_flows, name="open-flows", daemon=True
            )
            self._counting.start()
        return counts

    def _count_open_flows(self) -> None:
        kernel = self.kernel
        if kernel is None:
            return
        try:
            counts = kernel.open_flows(OPEN_FLOWS_LIMIT)
        except Exception as exc:
            log.warning("offload: cannot count open flows in conntrack: %s", exc)
            counts = self._open_flows[1]
        self._open_flows = (time.monotonic(), counts)

    def status(self) -> dict[str, object]:
        names = self.ids.owners
        by_backend: dict[str, int] = {}
        for backend_id, count in sorted(self.open_flows().items()):
            if backend_id in names:
                key, (ip, port) = names[backend_id]
                frontend = self.tables.frontends.get(key)
                label = f"{frontend.name if frontend else '?'} -> {endpoint_text(ip, port)}"
            else:
                label = f"backend id {backend_id} (no longer programmed)"
            by_backend[label] = count
        return {
            "service_ports": len(self.tables.frontends),
            "connection_table": {
                "flows": sum(by_backend.values()),
                "held_by": "kernel conntrack",
                # Backends removed whose connections are still being deleted (settling).
                "removals_pending": self.removals_pending(),
                "counted_up_to": OPEN_FLOWS_LIMIT,  # the counts are a floor beyond it
                "backend_ids": len(self.ids.ids),
                "by_backend": by_backend,
            },
            "session_affinity": {
                "clients": self.core.affinity_clients,
                "capacity": self.core.affinity_limit,
            },
            "counters": dict(sorted(self.counters.items())),
            "decided_by_backend": self.tables.decided_summary(),
        }
