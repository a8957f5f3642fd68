"""What the inspection commands show, built from the running proxy's state: the service
ports as the tracker resolved them and the data path holds them (`services`), the tracked
flows (`flows`), and one flow's choice of backend, and why (`explain`).

explain computes the choice as the data path does (the same frontend, the same Maglev
table, the same seeded flow hash), without touching any table: asking never changes what
the data path will do.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from ipaddress import ip_address
from typing import Any

from nfqproxy.datapath.flows import FlowRecord, endpoint_text
from nfqproxy.datapath.frontends import Frontend, TableKey, routing, variant_key
from nfqproxy.datapath.hashing import flow_hash
from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.marks import SOURCE_NODE, SOURCE_OFF_CLUSTER, SOURCE_POD
from nfqproxy.fields import PROTOCOLS, IPAddress
from nfqproxy.model import IPNetwork, ServicePort, ServicePortKey

# Flows one `nfqproxy flows` reads at most, filters applied to those: the fast path builds
# them while its workers wait for the table (about 5 ms for 10,000).
FLOW_LIMIT = 10_000


def table_key(port: ServicePort) -> TableKey:
    return (port.vip.packed, PROTOCOLS[port.protocol], port.port)


def maglev_shares(frontend: Frontend | None) -> dict[str, float]:
    """Each chosen backend's share of the frontend's Maglev table (what new flows get)."""
    if frontend is None or not frontend.backends:
        return {}
    shares = frontend.selector.shares()
    return {endpoint_text(*backend): shares[i] for i, backend in enumerate(frontend.backends)}


def service_row(port: ServicePort, datapath: Datapath) -> dict[str, Any]:
    frontend = datapath.frontend(table_key(port))
    shares = maglev_shares(frontend)
    backends = [
        {
            "endpoint": backend.name,
            "state": "serving-terminating" if backend in port.terminating else "ready",
            "share": round(shares.get(backend.name, 0.0), 4),
        }
        for backend in port.backends
    ]
    backends += [{"endpoint": b.name, "state": "draining", "share": 0.0} for b in port.draining]
    policies = [port.kind, port.policy]
    if port.affinity_seconds:
        policies.append(f"affinity ClientIP {port.affinity_seconds}s")
    if port.no_local_endpoints:
        policies.append("no local endpoints: dropped")
    if port.cluster_backends:
        policies.append(f"pods and node: {len(port.cluster_backends)} cluster endpoints")
    return {
        "service": port.name,
        "address": port.address_port,
        "programmed": frontend is not None,
        "backends": backends,
        "policies": policies,
    }


def services_view(
    ports: Mapping[ServicePortKey, ServicePort], datapath: Datapath
) -> list[dict[str, Any]]:
    ordered = sorted(ports.values(), key=lambda p: (p.vip.version, p.vip, p.port, p.protocol))
    return [service_row(port, datapath) for port in ordered]


def flows_view(
    datapath: Datapath,
    service: str | None = None,
    backend: str | None = None,
    client: str | None = None,
    limit: int = FLOW_LIMIT,
) -> dict[str, Any]:
    """The tracked flows matching every filter given (service: its name or a prefix of it,
    as namespace/name; backend and client: an address, or address:port)."""
    records, total = datapath.flow_records(limit)
    rows = [r.as_json() for r in records if _matches(r, service, backend, client)]
    return {"flows": rows, "listed": len(records), "total": total, "table": datapath.flow_table()}


def _matches(
    record: FlowRecord, service: str | None, backend: str | None, client: str | None
) -> bool:
    if service and not (record.service == service or record.service.startswith(service + ":")):
        return False
    if backend and backend not in _endpoint_texts(record.backend, record.backend_port):
        return False
    return not client or client in _endpoint_texts(record.client, record.client_port)


def _endpoint_texts(packed: bytes, port: int) -> tuple[str, str, str]:
    address = ip_address(packed)
    return str(address), f"{address}:{port}", endpoint_text(packed, port)


def source_bits(client: IPAddress, cluster_cidrs: tuple[IPNetwork, ...]) -> int:
    """The SOURCE_* bits the hooks (hooks.py) would put on this client's packets: pod
    inside a cluster CIDR of its family, off-cluster outside one (only when the family has
    one), node when the address is this node's own (their addrtype LOCAL)."""
    family = [cidr for cidr in cluster_cidrs if cidr.version == client.version]
    bits = 0
    if any(client in cidr for cidr in family):
        bits |= SOURCE_POD
    elif family:
        bits |= SOURCE_OFF_CLUSTER
    if is_local(client):
        bits |= SOURCE_NODE
    return bits


def is_local(address: IPAddress) -> bool:
    """Whether the address is one of this network namespace's own: it can be bound."""
    kind = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(kind, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def sticky_backend(
    datapath: Datapath,
    frontend: Frontend,
    key: TableKey,
    client: IPAddress,
    destination: IPAddress,
    port: int,
    answer: dict[str, Any],
) -> tuple[bytes, int] | None:
    """The client's sessionAffinity backend, if its entry is live and its backend still a
    candidate; answer["affinity"] says what the entry is, or why it is not used."""
    seconds = frontend.affinity_seconds
    entry = datapath.affinity_entry(key[1], client.packed, destination.packed, port)
    if entry is None:
        answer["affinity"] = f"ClientIP {seconds}s: no entry for this client; the choice makes one"
        return None
    backend, left = (entry[0], entry[1]), entry[2]
    named = f"ClientIP {seconds}s: this client's entry names {endpoint_text(*backend)}"
    if backend not in frontend.backends:
        answer["affinity"] = named + ", no longer a candidate: the choice below replaces it"
        return None
    answer["affinity"] = f"{named} for {left:.0f}s more (each new flow renews it)"
    return backend


def explain(
    ports: Mapping[ServicePortKey, ServicePort],
    datapath: Datapath,
    seed: int,
    client: IPAddress,
    client_port: int | None,
    destination: IPAddress,
    port: int,
    protocol: str,
    source: int,
) -> dict[str, Any]:
    """Which backend a new flow from client to destination:port gets, and why."""
    found = ports.get((destination, protocol, port))
    answer: dict[str, Any] = {
        "flow": f"{client}:{client_port or '*'} -> {destination}:{port}/{protocol}"
    }
    if found is None:
        vip_served = any(key[0] == destination for key in ports)
        answer["verdict"] = "reject: port not served" if vip_served else "no service here"
        return answer
    key = table_key(found)
    frontend = datapath.frontend(key)
    answer["service"] = found.name
    answer["policies"] = service_row(found, datapath)["policies"]
    if frontend is None:
        answer["verdict"] = "not programmed yet (the next sync programs it)"
        return answer
    use_variant, masquerade = routing(frontend.policy, source)
    if use_variant:
        variant = datapath.frontend(variant_key(key))
        if variant is None:  # programmed with its primary, always: the data path drops
            answer["verdict"] = "drop: internal_error (no cluster table)"
            return answer
        frontend = variant
        answer["table"] = "the cluster's (pods and the node reach every endpoint)"
    answer["masquerade"] = masquerade
    answer["candidates"] = [endpoint_text(*b) for b in frontend.backends]
    answer["draining"] = [endpoint_text(*b) for b in frontend.draining]
    if not frontend.backends:
        answer["verdict"] = (
            "drop: no local endpoints" if frontend.no_local_endpoints else "reject: no endpoints"
        )
        return answer
    if frontend.affinity_seconds:
        sticky = sticky_backend(datapath, frontend, key, client, destination, port, answer)
        if sticky is not None:
            answer["backend"] = endpoint_text(*sticky)
            answer["masquerade"] = answer["masquerade"] or sticky[0] == client.packed
            answer["verdict"] = f"accept: DNAT to {answer['backend']} (session affinity)"
            return answer
    if client_port is None:
        answer["verdict"] = "one of the candidates, by the client's port (give SRC:PORT)"
        return answer
    digest = flow_hash(key[1], client.packed, client_port, destination.packed, port, seed)
    slot = digest % len(frontend.selector.table)
    chosen = frontend.backends[frontend.selector.table[slot]]
    answer["maglev"] = {"hash": f"{digest:#018x}", "slot": slot, "of": len(frontend.selector.table)}
    answer["backend"] = endpoint_text(*chosen)
    if chosen[0] == client.packed:  # a hairpin: the backend would answer itself
        answer["masquerade"] = True
    answer["verdict"] = "accept: DNAT to " + answer["backend"]
    return answer
