"""Frontends: service ports as a data path holds them, and how a change is planned.

Every data path programs its tables from a plan built here, before any table is touched,
so a change either applies whole or not at all, the same way on every implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nfqproxy.datapath.maglev import MaglevSelector
from nfqproxy.datapath.marks import SOURCE_NODE, SOURCE_OFF_CLUSTER, SOURCE_POD
from nfqproxy.external import POLICIES, POLICY_EXTERNAL_LOCAL
from nfqproxy.fields import PROTOCOLS
from nfqproxy.model import Backend, ServicePort, ServicePortKey, Snapshot

# Frontend.policy, as numbers the compiled paths share (nfqproxy.external names them).
POLICY_NUMBERS = {name: number for number, name in enumerate(POLICIES)}
INTERNAL, EXTERNAL_CLUSTER, EXTERNAL_LOCAL = range(3)
# An externalTrafficPolicy Local frontend's second table, for the cluster's pods and the
# node: the same address and port, this bit added to the protocol number (above any 8-bit
# protocol number: SCTP's, 132, has the bit below it). The compiled core uses it too.
VARIANT_CLUSTER = 0x100
PROTOCOL_MASK = 0xFF


@dataclass(frozen=True, slots=True)
class Frontend:
    """A service port as the data path holds it: packed addresses and a Maglev selector."""

    name: str
    backends: tuple[tuple[bytes, int], ...]  # in Maglev order (sorted by name)
    selector: MaglevSelector
    affinity_seconds: int = 0  # sessionAffinity ClientIP; 0: none
    draining: tuple[tuple[bytes, int], ...] = ()  # present, not chosen: open flows stay
    no_local_endpoints: bool = False  # no backends, by internalTrafficPolicy Local: drop
    policy: int = INTERNAL  # which sources are masqueraded, and which take the variant

    def serves(self, backend: tuple[bytes, int]) -> bool:
        """Whether the backend is still part of the service, chosen or draining."""
        return backend in self.backends or backend in self.draining

    @classmethod
    def from_model(cls, port: ServicePort, seed: int) -> Frontend:
        return cls._build(
            port,
            port.backends,
            port.draining,
            port.no_local_endpoints,
            POLICY_NUMBERS[port.policy],
            seed,
        )

    @classmethod
    def cluster_variant(cls, port: ServicePort, seed: int) -> Frontend:
        """An externalTrafficPolicy Local frontend's table for the cluster's own pods and the
        node: every endpoint of the cluster, the others of the service draining."""
        present = {*port.backends, *port.draining}
        draining = tuple(sorted(present - set(port.cluster_backends)))
        return cls._build(port, port.cluster_backends, draining, False, INTERNAL, seed)

    @classmethod
    def _build(
        cls,
        port: ServicePort,
        backends: tuple[Backend, ...],
        draining: tuple[Backend, ...],
        no_local: bool,
        policy: int,
        seed: int,
    ) -> Frontend:
        by_name = sorted((b.name, (b.ip.packed, b.port)) for b in backends)
        return cls(
            port.name,
            tuple(packed for _, packed in by_name),
            MaglevSelector([name for name, _ in by_name], seed=seed),
            port.affinity_seconds,
            tuple((b.ip.packed, b.port) for b in draining),
            no_local,
            policy,
        )


TableKey = tuple[bytes, int, int]  # (VIP, protocol number, port)


def table_key(key: ServicePortKey) -> TableKey:
    vip, protocol, port = key
    return (vip.packed, PROTOCOLS[protocol], port)


def variant_key(key: TableKey) -> TableKey:
    return (key[0], key[1] | VARIANT_CLUSTER, key[2])


def primary_key(key: TableKey) -> TableKey:
    """The frontend a key's table belongs to: itself, or the one a variant serves."""
    return (key[0], key[1] & PROTOCOL_MASK, key[2])


def routing(policy: int, source: int) -> tuple[bool, bool]:
    """(take the cluster variant, masquerade) for a new flow to a frontend of this policy
    from a source with these bits: kube-proxy's EXT chain (nfqproxy.external), and for a
    ClusterIP its masquerade of sources outside the cluster. The compiled paths have the
    same rules in cext/fastpath/decide.pxi."""
    if policy == EXTERNAL_CLUSTER:
        return False, True
    if policy == EXTERNAL_LOCAL:
        if source & SOURCE_POD:
            return True, False
        if source & SOURCE_NODE:
            return True, True
        return False, False
    return False, bool(source & SOURCE_OFF_CLUSTER)


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
        key = table_key(model_key)
        if port is None:
            if old is not None:
                removed.append(key)
                if old.policy == POLICY_EXTERNAL_LOCAL:
                    removed.append(variant_key(key))
                names.append(old.name)
                lost = True
        elif port != old:
            built[key] = Frontend.from_model(port, seed)
            if port.policy == POLICY_EXTERNAL_LOCAL:
                built[variant_key(key)] = Frontend.cluster_variant(port, seed)
            elif old is not None and old.policy == POLICY_EXTERNAL_LOCAL:
                removed.append(variant_key(key))
            names.append(port.name)
            lost = lost or (
                old is not None
                and not (
                    {*old.backends, *old.cluster_backends}
                    <= {*port.backends, *port.cluster_backends}
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
