"""Frontends: service ports as a data path holds them, and how a change is planned.

Every data path programs its tables from a plan built here, before any table is touched,
so a change either applies whole or not at all, the same way on every implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nfqproxy.datapath.maglev import MaglevSelector
from nfqproxy.model import PROTOCOLS, ServicePort, ServicePortKey, Snapshot


@dataclass(frozen=True, slots=True)
class Frontend:
    """A service port as the data path holds it: packed addresses and a Maglev selector."""

    name: str
    backends: tuple[tuple[bytes, int], ...]  # in Maglev order (sorted by name)
    selector: MaglevSelector
    affinity_seconds: int = 0  # sessionAffinity ClientIP; 0: none
    draining: tuple[tuple[bytes, int], ...] = ()  # present, not chosen: open flows stay
    no_local_endpoints: bool = False  # no backends, by internalTrafficPolicy Local: drop

    def serves(self, backend: tuple[bytes, int]) -> bool:
        """Whether the backend is still part of the service, chosen or draining."""
        return backend in self.backends or backend in self.draining

    @classmethod
    def from_model(cls, port: ServicePort, seed: int) -> Frontend:
        by_name = sorted((b.name, (b.ip.packed, b.port)) for b in port.backends)
        return cls(
            port.name,
            tuple(packed for _, packed in by_name),
            MaglevSelector([name for name, _ in by_name], seed=seed),
            port.affinity_seconds,
            tuple((b.ip.packed, b.port) for b in port.draining),
            port.no_local_endpoints,
        )


TableKey = tuple[bytes, int, int]  # (VIP, protocol number, port)


def table_key(key: ServicePortKey) -> TableKey:
    vip, protocol, port = key
    return (vip.packed, PROTOCOLS[protocol], port)


PortChanges = Mapping[ServicePortKey, ServicePort | None]


@dataclass(frozen=True)
class TableChanges:
    """What programming a set of changes takes: frontends to drop, frontends (re)built."""

    removed: list[TableKey]
    built: dict[TableKey, Frontend]
    names: list[str]  # the service ports added, changed or removed
    backends_lost: bool  # a frontend went or lost a backend: its flows may need retiring


def snapshot_changes(
    old: Mapping[ServicePortKey, ServicePort], new: Snapshot
) -> dict[ServicePortKey, ServicePort | None]:
    """The changes that turn the frontends old into the snapshot new."""
    changes: dict[ServicePortKey, ServicePort | None] = {
        key: port for key, port in new.ports.items() if old.get(key) != port
    }
    changes.update(dict.fromkeys(old.keys() - new.ports.keys()))
    return changes


def plan_changes(
    current: Mapping[ServicePortKey, ServicePort], changes: PortChanges, seed: int
) -> TableChanges:
    """Every new frontend is built here, before any table is touched, so that a failure
    (too many backends, say) leaves the data path as it was."""
    built, removed, names, lost = {}, [], [], False
    for model_key, port in changes.items():
        old = current.get(model_key)
        if port is None:
            if old is not None:
                removed.append(table_key(model_key))
                names.append(old.name)
                lost = True
        elif port != old:
            built[table_key(model_key)] = Frontend.from_model(port, seed)
            names.append(port.name)
            lost = lost or (
                old is not None
                and not (
                    set(old.backends) <= set(port.backends)
                    and set(old.draining) <= {*port.backends, *port.draining}
                )
            )
    return TableChanges(removed, built, names, lost)


def update_ports(ports: dict[ServicePortKey, ServicePort], changes: PortChanges) -> None:
    for key, port in changes.items():
        if port is None:
            ports.pop(key, None)
        else:
            ports[key] = port
