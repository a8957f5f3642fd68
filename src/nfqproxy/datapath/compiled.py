"""The compiled core (cext/, nfqproxy._fastpath) that the fast and the offload paths share:
the service tables, the choice of a backend (Maglev, session affinity) and the verdicts, in
C. CompiledTables programs a FastCore from a plan; each data path adds its own around it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from ipaddress import IPv6Network

from nfqproxy.datapath.decisions import REFUSALS, PortCounts, TraceEvent, retired_names
from nfqproxy.datapath.flows import Timeouts, endpoint_text
from nfqproxy.datapath.frontends import Frontend, TableChanges, TableKey
from nfqproxy.model import IPNetwork

# Why the extension could not be loaded, for the error that asks for a data path using it.
_load_error: str | None = None
try:
    from nfqproxy._fastpath import FastCore
except ImportError as exc:
    # Not built (NFQPROXY_NO_EXTENSIONS=1 at install, `make ext` not run), or built but
    # refusing to load: a name table out of step with its enum, a missing C library.
    FastCore = None  # type: ignore[assignment,misc]
    _load_error = str(exc)


def compiled_available() -> bool:
    """Whether the extension is built and not switched off by NFQPROXY_NO_EXTENSIONS=1."""
    return FastCore is not None and os.environ.get("NFQPROXY_NO_EXTENSIONS") != "1"


def unavailable_reason() -> str:
    if os.environ.get("NFQPROXY_NO_EXTENSIONS") == "1":
        return "NFQPROXY_NO_EXTENSIONS=1 is set"
    return f"its extension did not load: {_load_error}; `make ext` builds it"


def require_compiled(name: str) -> None:
    if not compiled_available():
        raise RuntimeError(
            f"the {name} data path is not available: {unavailable_reason()}; "
            "use --datapath reference"
        )


def mapped_range(cidr: IPNetwork) -> tuple[bytes, bytes]:
    """A service CIDR as the C tables hold addresses, 16 bytes: an IPv4 one mapped into
    IPv6 (::ffff:0:0/96), its mask 96 bits longer."""
    if cidr.version == 4:
        mapped = IPv6Network(f"::ffff:{cidr.network_address}/{96 + cidr.prefixlen}")
        return mapped.network_address.packed, mapped.netmask.packed
    return cidr.network_address.packed, cidr.netmask.packed


# Service ports up to which the status lists the flows decided per backend.
DECIDED_DETAIL_LIMIT = 1000

# The marks of a frontend's backends, chosen then draining (the offload path's); None: none.
BackendMarks = Callable[[TableKey, Frontend], list[int] | None]


class CompiledTables:
    """A FastCore and the frontends programmed into it, by slot."""

    def __init__(
        self,
        service_cidrs: Iterable[IPNetwork],
        capacity: int,
        timeouts: Timeouts | None,
        seed: int,
        affinity_limit: int = 0,  # 0: affinity_capacity(capacity)
    ) -> None:
        t = timeouts or Timeouts()
        self.core = FastCore(
            [mapped_range(cidr) for cidr in service_cidrs],
            capacity,
            t.in_state_order(),
            seed,
            affinity_limit,
        )
        self.frontends: dict[TableKey, Frontend] = {}
        # New flows per (service port, backend) counted by frontends since replaced, kept
        # while the backend stays in its service port: C counts from each installation.
        self._decided_before: Counter[tuple[TableKey, tuple[bytes, int]]] = Counter()
        self._port_counts = PortCounts()  # of frontends since replaced, as _decided_before
        self._slots: dict[TableKey, int] = {}
        self._free_slots: list[int] = []

    def program(self, plan: TableChanges, marks: BackendMarks | None = None) -> None:
        """Removes and (re)builds the plan's frontends. The caller holds core.hold(), so
        that no worker sees half of it."""
        retired = retired_names(self.frontends, plan.removed, plan.built)
        for key in [*plan.removed, *plan.built]:
            self._fold_decided(key, plan.built.get(key))
            if key in self._slots:  # C counts from each installation
                self._port_counts_into(self._port_counts, key)
        for key in plan.removed:
            slot = self._slots.pop(key)
            self.core.remove_frontend(slot)
            self._free_slots.append(slot)
            del self.frontends[key]
        for key, frontend in plan.built.items():
            if key not in self._slots:
                self._slots[key] = self._free_slots.pop() if self._free_slots else len(self._slots)
            vip, proto, port = key
            self.core.set_frontend(
                self._slots[key],
                vip,
                proto,
                port,
                list(frontend.backends),
                frontend.selector.table,
                frontend.affinity_seconds,
                list(frontend.draining),
                frontend.no_local_endpoints,
                marks(key, frontend) if marks else None,
                frontend.policy,
            )
            self.frontends[key] = frontend
        self._port_counts.retire(retired, self.frontends)
        if plan.names:
            self.core.rebuild_maps()  # in C: well under a millisecond at 10k frontends

    def _fold_decided(self, key: TableKey, replacement: Frontend | None) -> None:
        old = self.frontends.get(key)
        if old is None:
            return
        kept = {*replacement.backends, *replacement.draining} if replacement else set()
        counts = self.core.decided(self._slots[key])
        for backend, count in zip((*old.backends, *old.draining), counts, strict=False):
            if backend in kept:
                self._decided_before[(key, backend)] += count
            else:
                self._decided_before.pop((key, backend), None)

    def _port_counts_into(self, counts: PortCounts, key: TableKey) -> None:
        slot = self._slots[key]
        counts.add(key, "new_flow", sum(self.core.decided(slot)))
        for reason, count in zip(REFUSALS, self.core.refused(slot), strict=True):
            counts.add(key, reason, count)

    def service_port_counts(self) -> dict[str, dict[str, int]]:
        """New and refused flows by service port name (datapath.interface)."""
        live = PortCounts()
        with self.core.hold():
            for key in self.frontends:
                self._port_counts_into(live, key)
        return self._port_counts.by_service_port(self.frontends, live)

    def trace_start(self, size: int) -> None:
        self.core.trace_start(size)

    def trace_stop(self) -> None:
        self.core.trace_stop()

    def trace_take(self) -> tuple[list[TraceEvent], int]:
        rows, lost = self.core.trace_take()
        return [TraceEvent(*row) for row in rows], lost

    def decided(self) -> Counter[tuple[TableKey, tuple[bytes, int]]]:
        """New flows sent to each backend of each service port, while it is there."""
        totals = Counter(self._decided_before)
        for key, frontend in self.frontends.items():
            present = (*frontend.backends, *frontend.draining)
            for backend, count in zip(present, self.core.decided(self._slots[key]), strict=False):
                totals[(key, backend)] += count
        return totals

    def decided_summary(self, limit: int = DECIDED_DETAIL_LIMIT) -> dict[str, object]:
        """decided() for the status: "service port -> backend": count, with up to limit
        service ports. Beyond, it is left out without being counted: a status write twice
        a second must not walk 10,000 frontends (it held syncs back 50 ms at N = 10000)."""
        if len(self.frontends) > limit:
            return {"detail": f"left out above {limit} service ports"}
        totals = self.decided()
        rows: dict[str, object] = {}
        for (key, (ip, port)), count in sorted(totals.items()):
            frontend = self.frontends.get(key)
            rows[f"{frontend.name if frontend else '?'} -> {endpoint_text(ip, port)}"] = count
        return rows


class DecisionsOfTables:
    """The contract's decision records (datapath.interface) of a data path built on
    CompiledTables: the C core keeps them."""

    tables: CompiledTables
    clock: Callable[[], float]

    def service_port_counts(self) -> dict[str, dict[str, int]]:
        return self.tables.service_port_counts()

    def trace_start(self, size: int) -> None:
        self.tables.trace_start(size)

    def trace_stop(self) -> None:
        self.tables.trace_stop()

    def trace_take(self) -> tuple[list[TraceEvent], int]:
        return self.tables.trace_take()

    def affinity_entry(
        self, proto: int, client: bytes, vip: bytes, vport: int
    ) -> tuple[bytes, int, float] | None:
        now = self.clock()
        entry = self.tables.core.affinity_entry(proto, client, vip, vport, now)
        return None if entry is None else (entry[0], entry[1], entry[2] - now)
