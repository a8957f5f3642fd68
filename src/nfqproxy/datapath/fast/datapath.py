"""The fast data path: the reference semantics, with the per-packet work in C (cext/).

FastDatapath has the reference's interface (apply, process, expire, status), so the
controller, the queue binding and the differential tests treat both alike. Python only
runs here when tables change and for status snapshots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from nfqproxy import defaults
from nfqproxy.datapath.compiled import (
    CompiledTables,
    DecisionsOfTables,
    compiled_available,
    require_compiled,
)
from nfqproxy.datapath.compiled import unavailable_reason as unavailable_reason
from nfqproxy.datapath.flows import (
    SUMMARY_DETAIL_LIMIT,
    FlowRecord,
    Timeouts,
    endpoint_text,
    flow_summary,
)
from nfqproxy.datapath.frontends import (
    Frontend,
    PortChanges,
    TableKey,
    plan_changes,
    snapshot_changes,
    update_ports,
)
from nfqproxy.datapath.verdicts import Action, Verdict
from nfqproxy.model import IPNetwork, ServicePort, ServicePortKey, Snapshot


def fast_path_available() -> bool:
    """Whether the fast path is built and not switched off by NFQPROXY_NO_EXTENSIONS=1."""
    return compiled_available()


class FastDatapath(DecisionsOfTables):
    def __init__(
        self,
        service_cidrs: Iterable[IPNetwork],
        capacity: int = defaults.FLOW_CAPACITY,
        timeouts: Timeouts | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        require_compiled("fast")
        self.tables = CompiledTables(service_cidrs, capacity, timeouts, seed)
        self.core = self.tables.core
        self.capacity = capacity
        self.seed = seed
        self.clock = clock
        self._ports: dict[ServicePortKey, ServicePort] = {}  # as programmed
        self._frontends = self.tables.frontends

    @property
    def counters(self) -> dict[str, int]:
        return self.core.counters()

    def apply(self, snapshot: Snapshot) -> list[str]:
        """Programs the tables to hold exactly the snapshot; see apply_changes."""
        return self.apply_changes(snapshot_changes(self._ports, snapshot))

    def apply_changes(self, changes: PortChanges) -> list[str]:
        """As ReferenceDatapath.apply_changes: all or nothing."""
        plan = plan_changes(self._ports, changes, self.seed)
        with self.core.hold():  # a queue worker sees the tables before or after, never between
            self.tables.program(plan)
            update_ports(self._ports, changes)
            if plan.backends_lost:
                self.core.retire_flows_to_removed_backends(self.clock())
        return plan.names

    def frontend(self, key: TableKey) -> Frontend | None:
        return self._frontends.get(key)

    def process(self, raw: bytes, source: int = 0) -> Verdict:
        action, reason, payload, proxied, masquerade = self.core.process(
            raw, self.clock(), source=source
        )
        return Verdict(Action(action), reason, payload, proxied, masquerade)

    def expire(self) -> int:
        return self.core.expire(self.clock())

    def __len__(self) -> int:
        return len(self.core)

    def flow_table(self) -> dict[str, object]:
        return {
            "capacity": self.capacity,
            "evicted": self.core.evicted,
            "expired": self.core.expired,
        }

    def flow_records(self, limit: int) -> tuple[list[FlowRecord], int]:
        now = self.clock()
        records = []
        for row in self.core.flows(now, limit):
            proto, client, cport, vip, vport, backend, bport, state, expires, age = row
            frontend = self._frontends.get((vip, proto, vport))
            name = frontend.name if frontend else "?"
            records.append(
                FlowRecord(
                    proto,
                    client,
                    cport,
                    vip,
                    vport,
                    backend,
                    bport,
                    name,
                    state,
                    expires - now,
                    float(age),
                )
            )
        return records, len(self.core)

    def status(self) -> dict[str, object]:
        if len(self.core) > SUMMARY_DETAIL_LIMIT:
            table: dict[str, object] = {
                "flows": len(self.core),
                "capacity": self.capacity,
                "evicted": self.core.evicted,
                "expired": self.core.expired,
                "by_state": self.core.state_counts(),
                "by_backend": f"left out above {SUMMARY_DETAIL_LIMIT} flows",
            }
        else:
            rows = []
            for row in self.core.flows(self.clock()):
                proto, _, _, vip, vport, backend_ip, backend_port, state, _, _ = row
                frontend = self._frontends.get((vip, proto, vport))
                name = frontend.name if frontend else "?"
                rows.append((proto, state, name, endpoint_text(backend_ip, backend_port)))
            table = flow_summary(rows, self.capacity, self.core.evicted, self.core.expired)
        return {
            "service_ports": len(self._frontends),
            "connection_table": table,
            "session_affinity": {
                "clients": self.core.affinity_clients,
                "capacity": self.core.affinity_limit,
            },
            "counters": dict(sorted(self.counters.items())),
            "decided_by_backend": self.tables.decided_summary(),
        }
