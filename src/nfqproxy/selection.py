"""Which endpoints get traffic: kube-proxy's CategorizeEndpoints (pkg/proxy/topology.go)
applied to each service port, on its ClusterIPs here and on its external addresses
through nfqproxy.external."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nfqproxy.external import external_ports
from nfqproxy.model import (
    Backend,
    EndpointSliceSpec,
    EndpointSpec,
    NodeView,
    ServicePort,
    ServicePortSpec,
    ServiceSpec,
)


@dataclass(frozen=True)
class EndpointChoice:
    chosen: list[EndpointSpec]
    usable_elsewhere: bool = False  # none chosen, but some are usable on other nodes


def topology_mode(
    endpoints: Iterable[EndpointSpec], node_name: str | None, zone: str | None
) -> str:
    """kube-proxy's topologyModeFromHints, decided from the Ready endpoints only:
    PreferSameNode when every one has node hints and one names this node, else
    PreferSameZone when every one has zone hints and one names this zone, else none.
    Partial hints mean the EndpointSlice controller is mid-change: they are ignored."""
    ready = [e for e in endpoints if e.ready]

    def every_one_hinted_and_one_for(
        hints: Callable[[EndpointSpec], frozenset[str]], name: str | None
    ) -> bool:
        return bool(name) and all(hints(e) for e in ready) and any(name in hints(e) for e in ready)

    if ready and every_one_hinted_and_one_for(lambda e: e.node_hints, node_name):
        return "PreferSameNode"
    if ready and every_one_hinted_and_one_for(lambda e: e.zone_hints, zone):
        return "PreferSameZone"
    return ""


def _hinted_for(endpoint: EndpointSpec, mode: str, node_name: str | None, zone: str | None) -> bool:
    if mode == "PreferSameNode":
        return node_name in endpoint.node_hints
    if mode == "PreferSameZone":
        return zone in endpoint.zone_hints
    return True


def select_endpoints(
    endpoints: Iterable[EndpointSpec],
    node_name: str | None,
    local_only: bool,
    node_zone: str | None = None,
) -> EndpointChoice:
    """kube-proxy's CategorizeEndpoints for a ClusterIP.

    Cluster policy: the Ready endpoints the topology hints allow, else (ignoring hints) the
    serving-and-terminating ones. Local policy: this node's Ready endpoints, else its
    serving-and-terminating ones; an endpoint is this node's only if both it and the proxy
    name a node, and they agree. Hints play no part in Local.
    """
    endpoints = list(endpoints)
    if not local_only:
        mode = topology_mode(endpoints, node_name, node_zone)
        chosen = [e for e in endpoints if e.ready and _hinted_for(e, mode, node_name, node_zone)]
        return EndpointChoice(chosen or [e for e in endpoints if e.serving and e.terminating])
    local = [e for e in endpoints if node_name and e.node_name == node_name]
    chosen = [e for e in local if e.ready] or [e for e in local if e.serving and e.terminating]
    usable = any(e.ready or (e.serving and e.terminating) for e in endpoints)
    return EndpointChoice(chosen, usable_elsewhere=not chosen and usable)


def local_ready_endpoints(slices: Iterable[EndpointSliceSpec], node_name: str | None) -> int:
    """kube-proxy's LocalReadyEndpoints: Ready endpoints of this node, by address, over
    every port of the service; serving but terminating ones do not count."""
    return len(
        {
            e.addresses[0]
            for s in slices
            if s.address_type != "FQDN"
            for e in s.endpoints
            if e.ready and node_name and e.node_name == node_name
        }
    )


def matching_endpoints(
    slices: Iterable[EndpointSliceSpec], family: str, port: ServicePortSpec
) -> list[tuple[EndpointSpec, int]]:
    """The endpoints of a service port, each with its target port, from every slice."""
    matching: list[tuple[EndpointSpec, int]] = []
    for endpoint_slice in slices:
        if endpoint_slice.address_type != family:
            continue
        for slice_port in endpoint_slice.ports:
            if slice_port.name == port.name and slice_port.protocol == port.protocol:
                matching += [(e, slice_port.port) for e in endpoint_slice.endpoints]
    return matching


def backends_of(
    choice: EndpointChoice, matching: list[tuple[EndpointSpec, int]], fallback: bool = False
) -> tuple[Backend, ...]:
    """The chosen endpoints' backends; fallback: only those chosen while not Ready (the
    serving-and-terminating fallback)."""
    chosen_ids = {id(e) for e in choice.chosen}
    return tuple(
        sorted(
            {
                Backend(e.addresses[0], p)
                for e, p in matching
                if id(e) in chosen_ids and not (fallback and e.ready)
            }
        )
    )


def port_name(service: ServiceSpec, port: ServicePortSpec) -> str:
    return f"{service.key}:{port.name}" if port.name else service.key


def service_ports(
    service: ServiceSpec,
    slices: Iterable[EndpointSliceSpec],
    node_name: str | None,
    node_zone: str | None,
    node: NodeView | None = None,
) -> list[ServicePort]:
    """The frontends of one service, each with the backends kube-proxy would choose: its
    ClusterIPs, then its NodePorts, externalIPs and ingress IPs."""
    if service.skip_reason is not None:
        return []
    slices = list(slices)
    result = []
    # A family the service has no ClusterIP in is not served at all, external addresses
    # included: kube-proxy's per-family proxiers skip such a service.
    families = [
        f for f in ("IPv4", "IPv6") if any(f"IPv{v.version}" == f for v in service.cluster_ips)
    ]
    for port in service.ports:
        for family in families:
            matching = matching_endpoints(slices, family, port)
            endpoints = [e for e, _ in matching]
            present = {Backend(e.addresses[0], p) for e, p in matching if e.addresses}
            choice = select_endpoints(
                endpoints, node_name, service.internal_traffic_local, node_zone
            )
            backends = backends_of(choice, matching)
            draining = tuple(sorted(present - set(backends)))
            for vip in (v for v in service.cluster_ips if f"IPv{v.version}" == family):
                result.append(
                    ServicePort(
                        port_name(service, port),
                        vip,
                        port.protocol,
                        port.port,
                        backends,
                        service.affinity_seconds,
                        draining,
                        choice.usable_elsewhere,
                        terminating=backends_of(choice, matching, fallback=True),
                    )
                )
            if not service.externally_accessible:
                continue
            # External destinations take the cluster policy whatever internalTrafficPolicy
            # says (kube-proxy's clusterPolicyChain; topology_test.go "iTP: Local, eTP:
            # Local"), and, with externalTrafficPolicy Local, this node's endpoints.
            cluster_choice = select_endpoints(endpoints, node_name, False, node_zone)
            cluster = backends_of(cluster_choice, matching)
            fallback = set(backends_of(cluster_choice, matching, fallback=True))
            local = None
            if service.external_traffic_local:
                local_choice = select_endpoints(endpoints, node_name, True, node_zone)
                local = (backends_of(local_choice, matching), local_choice.usable_elsewhere)
                fallback |= set(backends_of(local_choice, matching, fallback=True))
            result += external_ports(
                service,
                port,
                port_name(service, port),
                family,
                cluster,
                local,
                present,
                node.nodeport_ips if node is not None else (),
                tuple(sorted(fallback)),
            )
    return result
