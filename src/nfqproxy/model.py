"""The model: which endpoints get traffic for each service port, on each of its addresses.

It reads Service and EndpointSlice objects as the API serves them (plain dicts) and
applies kube-proxy's rules, as pkg/proxy's endpointslicecache.go and topology.go
(CategorizeEndpoints) state them: for the ClusterIPs here, and for the external addresses
(NodePorts, externalIPs, LoadBalancer ingress IPs) in nfqproxy.external. Validation lives
here too (with nfqproxy.fields and nfqproxy.families), so that a manifest file, an API
watch and a test all reject the same objects with the same message, naming the field at
fault."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from nfqproxy.families import check_ip_families
from nfqproxy.fields import (
    DEFAULT_NAMESPACE,
    DNS_1035_LABEL,
    DNS_1123_SUBDOMAIN,
    PORT_NAME,
    IPAddress,
    ObjectError,
    printable,
    read_bool,
    read_ip,
    read_list,
    read_mapping,
    read_metadata,
    read_port,
    read_protocol,
    read_string,
)

IPNetwork = IPv4Network | IPv6Network

LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
MAX_ENDPOINTS_PER_SLICE = 1000  # the API server's maxItems for EndpointSlice.endpoints
MAX_BACKENDS_PER_PORT = 65534  # Maglev slots hold uint16 backend indexes
DEFAULT_AFFINITY_SECONDS = 10800  # the API's default for sessionAffinity ClientIP
MAX_AFFINITY_SECONDS = 86400  # the API's limit


# (namespace, name): how every source and the tracker key an object.
ObjectKey = tuple[str, str]


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return ("", "")
    return (str(meta.get("namespace", DEFAULT_NAMESPACE)), str(meta.get("name", "")))


def object_ref(obj: object) -> str:
    """'Kind namespace/name' for messages, as far as the object allows."""
    if not isinstance(obj, Mapping):
        return f"<{type(obj).__name__}>"
    kind = obj.get("kind", "<no kind>")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return f"{kind} <no metadata>"
    ns = meta.get("namespace", DEFAULT_NAMESPACE)
    name = meta.get("name", "<no name>")
    return f"{printable(kind)} {printable(ns)}/{printable(name)}"


# --- parsed objects -------------------------------------------------------------------


@dataclass(frozen=True)
class ServicePortSpec:
    name: str
    protocol: str
    port: int
    node_port: int = 0  # NodePort and LoadBalancer services; 0: none


SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


@dataclass(frozen=True)
class ServiceSpec:
    namespace: str
    name: str
    cluster_ips: tuple[IPAddress, ...]
    ports: tuple[ServicePortSpec, ...]
    internal_traffic_local: bool
    skip_reason: str | None = None  # why kube-proxy would not program it
    affinity_seconds: int = 0  # sessionAffinity ClientIP: how long a client sticks; 0: off
    type: str = "ClusterIP"
    external_ips: tuple[IPAddress, ...] = ()  # spec.externalIPs
    # status.loadBalancer.ingress[].ip, but not those with ipMode Proxy: the load balancer
    # sends their traffic to the node itself, so kube-proxy does not capture them.
    ingress_ips: tuple[IPAddress, ...] = ()
    source_ranges: tuple[IPNetwork, ...] = ()  # spec.loadBalancerSourceRanges
    external_traffic_local: bool = False  # spec.externalTrafficPolicy Local
    health_check_node_port: int = 0  # spec.healthCheckNodePort; 0: none

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def needs_health_check(self) -> bool:
        """kube-proxy's NeedsHealthCheck: a LoadBalancer with externalTrafficPolicy Local."""
        return (
            self.skip_reason is None
            and self.type == "LoadBalancer"
            and self.external_traffic_local
            and self.health_check_node_port != 0
        )

    @property
    def externally_accessible(self) -> bool:
        """kube-proxy's ExternallyAccessible: a NodePort, an external IP or an ingress IP."""
        return bool(any(p.node_port for p in self.ports) or self.external_ips or self.ingress_ips)


@dataclass(frozen=True)
class EndpointSpec:
    addresses: tuple[IPAddress, ...]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None
    zone_hints: frozenset[str] = frozenset()  # hints.forZones[].name
    node_hints: frozenset[str] = frozenset()  # hints.forNodes[].name (PreferSameNode)


@dataclass(frozen=True)
class SlicePortSpec:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class EndpointSliceSpec:
    namespace: str
    name: str
    service_name: str | None
    address_type: str
    endpoints: tuple[EndpointSpec, ...]
    ports: tuple[SlicePortSpec, ...]
    # Ports kube-proxy ignores (no name, no port number), each with the reason: the rest of
    # the slice is used.
    ignored_ports: tuple[str, ...] = ()


def parse_service(
    obj: Mapping[str, Any],
    service_cidrs: Iterable[IPNetwork],
    service_proxy_name: str | None = None,
) -> ServiceSpec:
    """A Service as the model needs it. Raises ObjectError naming the bad field."""
    namespace, name = read_metadata(obj, DNS_1035_LABEL)
    labels = read_mapping(obj["metadata"].get("labels"), "metadata.labels", required=False)
    spec = read_mapping(obj.get("spec"), "spec")
    svc_type = spec.get("type", "ClusterIP")
    if not isinstance(svc_type, str) or svc_type not in SERVICE_TYPES:
        raise ObjectError("spec.type", f"{svc_type!r:.40} is not a known Service type")

    skip_reason = None
    if labels.get(LABEL_SERVICE_PROXY_NAME) != service_proxy_name:
        # kube-proxy serves unlabelled services, or with --service-proxy-name only its own.
        skip_reason = f"{LABEL_SERVICE_PROXY_NAME} is not {service_proxy_name or 'absent'}"
    elif svc_type == "ExternalName":
        skip_reason = "type ExternalName"

    raw_ips: list[Any] = read_list(spec.get("clusterIPs"), "spec.clusterIPs")
    ip_path = "spec.clusterIPs[{}]"
    single = spec.get("clusterIP")
    if single not in (None, "", "None"):
        read_ip(single, "spec.clusterIP")
    if not raw_ips and single is not None:
        raw_ips, ip_path = [single], "spec.clusterIP"
    elif raw_ips and single is not None and single != raw_ips[0]:
        # The API server enforces this; a hand-written manifest may not.
        raise ObjectError(
            "spec.clusterIP", f"{single!r:.60} differs from spec.clusterIPs[0] {raw_ips[0]!r:.60}"
        )
    if not raw_ips and skip_reason is None:
        raise ObjectError("spec.clusterIP", "is required for a ClusterIP service")
    if raw_ips and raw_ips[0] in ("None", ""):
        skip_reason = skip_reason or "headless (clusterIP None)"
        raw_ips = []
    cidrs = list(service_cidrs)
    all_ips = [read_ip(raw, ip_path.format(i)) for i, raw in enumerate(raw_ips)]
    check_ip_families(spec, all_ips)
    cluster_ips = []
    for i, vip in enumerate(all_ips):
        path = ip_path.format(i)
        family_ranges = [cidr for cidr in cidrs if cidr.version == vip.version]
        if not family_ranges:
            continue  # e.g. the IPv6 half of a dual-stack service on an IPv4-only proxy
        if skip_reason is None and not any(vip in cidr for cidr in family_ranges):
            ranges = ", ".join(str(c) for c in family_ranges)
            raise ObjectError(path, f"{vip} is outside the service range ({ranges})")
        cluster_ips.append(vip)

    ports = []
    raw_ports = read_list(spec.get("ports"), "spec.ports")
    seen: set[tuple[str, int]] = set()
    for i, raw_port in enumerate(raw_ports):
        base = f"spec.ports[{i}]"
        port_spec = read_mapping(raw_port, base)
        port_name = port_spec.get("name", "")
        if port_name != "" or len(raw_ports) > 1:
            read_string(port_name, f"{base}.name", PORT_NAME)
        protocol = read_protocol(port_spec.get("protocol"), f"{base}.protocol")
        port = read_port(port_spec.get("port"), f"{base}.port")
        if (protocol, port) in seen:
            raise ObjectError(f"{base}.port", f"{protocol} {port} is listed twice")
        seen.add((protocol, port))
        node_port = 0
        if svc_type in ("NodePort", "LoadBalancer") and port_spec.get("nodePort") is not None:
            # allocateLoadBalancerNodePorts: false leaves a LoadBalancer without them.
            node_port = read_port(port_spec.get("nodePort"), f"{base}.nodePort")
        ports.append(ServicePortSpec(str(port_name), protocol, port, node_port))

    traffic_policy = spec.get("internalTrafficPolicy", "Cluster")
    if traffic_policy not in ("Cluster", "Local"):
        raise ObjectError(
            "spec.internalTrafficPolicy", f"{traffic_policy!r:.40} is not Cluster or Local"
        )
    external_policy = spec.get("externalTrafficPolicy", "Cluster")
    if external_policy not in ("Cluster", "Local"):
        raise ObjectError(
            "spec.externalTrafficPolicy", f"{external_policy!r:.40} is not Cluster or Local"
        )
    families: set[int] = {cidr.version for cidr in cidrs}
    external_ips = [
        address
        for i, raw in enumerate(read_list(spec.get("externalIPs"), "spec.externalIPs"))
        if (address := read_ip(raw, f"spec.externalIPs[{i}]")).version in families
    ]
    health_check_node_port = 0
    if svc_type == "LoadBalancer" and spec.get("healthCheckNodePort") not in (None, 0):
        health_check_node_port = read_port(spec["healthCheckNodePort"], "spec.healthCheckNodePort")
    load_balancer = svc_type == "LoadBalancer"
    return ServiceSpec(
        namespace,
        name,
        tuple(cluster_ips),
        tuple(ports),
        traffic_policy == "Local",
        skip_reason,
        _affinity_seconds(spec),
        str(svc_type),
        tuple(dict.fromkeys(external_ips)),
        _ingress_ips(obj, families) if load_balancer else (),
        _source_ranges(spec, families) if load_balancer else (),
        external_policy == "Local",
        health_check_node_port,
    )


def _ingress_ips(obj: Mapping[str, Any], families: set[int]) -> tuple[IPAddress, ...]:
    """status.loadBalancer.ingress[].ip, less those with ipMode Proxy (kube-proxy's
    LoadBalancerVIPs) and those of a family this proxy does not serve."""
    status = read_mapping(obj.get("status"), "status", required=False)
    balancer = read_mapping(status.get("loadBalancer"), "status.loadBalancer", required=False)
    found: list[IPAddress] = []
    for i, raw in enumerate(read_list(balancer.get("ingress"), "status.loadBalancer.ingress")):
        base = f"status.loadBalancer.ingress[{i}]"
        ingress = read_mapping(raw, base)
        if ingress.get("ip") in (None, ""):
            continue  # a hostname only: the load balancer resolves it, not us
        address = read_ip(ingress["ip"], f"{base}.ip")
        mode = ingress.get("ipMode", "VIP")
        if mode not in ("VIP", "Proxy"):
            raise ObjectError(f"{base}.ipMode", f"{mode!r:.40} is not VIP or Proxy")
        if mode == "VIP" and address.version in families:
            found.append(address)
    return tuple(dict.fromkeys(found))


def _source_ranges(spec: Mapping[str, Any], families: set[int]) -> tuple[IPNetwork, ...]:
    """spec.loadBalancerSourceRanges, as CIDRs (host bits allowed, as the API allows)."""
    ranges: list[IPNetwork] = []
    path = "spec.loadBalancerSourceRanges"
    for i, raw in enumerate(read_list(spec.get("loadBalancerSourceRanges"), path)):
        text = read_string(raw, f"{path}[{i}]").strip()
        try:
            if "%" in text:  # an IPv6 zone: any text, kept by str() (fields.read_ip)
                raise ValueError(text)
            network = ip_network(text, strict=False)
        except ValueError:
            raise ObjectError(f"{path}[{i}]", f"{text[:80]!r} is not a valid CIDR") from None
        if network.version in families:
            ranges.append(network)
    return tuple(dict.fromkeys(ranges))


def _affinity_seconds(spec: Mapping[str, Any]) -> int:
    """sessionAffinity: 0 for None, else ClientIP's timeoutSeconds (default 10800)."""
    affinity = spec.get("sessionAffinity", "None")
    if affinity not in ("None", "ClientIP"):
        raise ObjectError("spec.sessionAffinity", f"{affinity!r:.40} is not None or ClientIP")
    if affinity == "None":
        return 0
    config = read_mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig", False)
    client_ip = read_mapping(
        config.get("clientIP"), "spec.sessionAffinityConfig.clientIP", required=False
    )
    path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    seconds = client_ip.get("timeoutSeconds", DEFAULT_AFFINITY_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ObjectError(path, f"must be an integer, got {seconds!r:.40}")
    if not 0 < seconds <= MAX_AFFINITY_SECONDS:
        raise ObjectError(path, f"{seconds} is out of range 1-{MAX_AFFINITY_SECONDS}")
    return seconds


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSliceSpec:
    """An EndpointSlice as the model needs it. Raises ObjectError naming the bad field."""
    namespace, name = read_metadata(obj, DNS_1123_SUBDOMAIN)
    labels = read_mapping(obj["metadata"].get("labels"), "metadata.labels", required=False)
    service_name = labels.get(LABEL_SERVICE_NAME)
    if service_name is not None:
        read_string(service_name, f"metadata.labels[{LABEL_SERVICE_NAME}]", DNS_1035_LABEL)
    address_type = obj.get("addressType")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise ObjectError("addressType", f"{address_type!r:.40} is not IPv4, IPv6 or FQDN")

    ports, ignored = [], []
    for i, raw_port in enumerate(read_list(obj.get("ports"), "ports")):
        base = f"ports[{i}]"
        port_spec = read_mapping(raw_port, base)
        port_name = port_spec.get("name")
        if port_name:
            read_string(port_name, f"{base}.name", PORT_NAME)
        elif port_name is not None and port_name != "":
            raise ObjectError(f"{base}.name", f"must be a string, got {port_name!r:.40}")
        protocol = read_protocol(port_spec.get("protocol"), f"{base}.protocol")
        number = port_spec.get("port")
        # kube-proxy skips such a port and uses the rest of the slice.
        if port_name is None:
            ignored.append(f'{base}.name: absent, so kube-proxy ignores this port (write name: "")')
        elif number is None or number == 0:
            given = "absent" if number is None else "0"
            ignored.append(f"{base}.port: {given}, so kube-proxy ignores this port")
        else:
            ports.append(SlicePortSpec(port_name, protocol, read_port(number, f"{base}.port")))

    raw_endpoints = read_list(obj.get("endpoints"), "endpoints")
    if len(raw_endpoints) > MAX_ENDPOINTS_PER_SLICE:
        raise ObjectError(
            "endpoints", f"{len(raw_endpoints)} endpoints exceed the API's limit of 1000 per slice"
        )
    endpoints = []
    for i, raw_endpoint in enumerate(raw_endpoints):
        base = f"endpoints[{i}]"
        endpoint = read_mapping(raw_endpoint, base)
        addresses: list[IPAddress] = []
        raw_addresses = read_list(endpoint.get("addresses"), f"{base}.addresses")
        if not raw_addresses:
            raise ObjectError(f"{base}.addresses", "must list at least one address")
        if address_type != "FQDN":
            want = 4 if address_type == "IPv4" else 6
            for j, raw in enumerate(raw_addresses):
                address = read_ip(raw, f"{base}.addresses[{j}]")
                if address.version != want:
                    raise ObjectError(f"{base}.addresses[{j}]", f"{address} is not {address_type}")
                addresses.append(address)
        conditions = read_mapping(endpoint.get("conditions"), f"{base}.conditions", required=False)
        # As kube-proxy reads them: an absent 'ready' or 'serving' is true, an absent
        # 'terminating' false.
        ready = read_bool(conditions.get("ready"), f"{base}.conditions.ready", True)
        serving = read_bool(conditions.get("serving"), f"{base}.conditions.serving", True)
        terminating = read_bool(
            conditions.get("terminating"), f"{base}.conditions.terminating", False
        )
        node_name = endpoint.get("nodeName")
        if node_name is not None:
            read_string(node_name, f"{base}.nodeName", DNS_1123_SUBDOMAIN)
        hints = read_mapping(endpoint.get("hints"), f"{base}.hints", required=False)
        zones, nodes = (
            _hint_names(hints, kind, f"{base}.hints") for kind in ("forZones", "forNodes")
        )
        endpoints.append(
            EndpointSpec(tuple(addresses), ready, serving, terminating, node_name, zones, nodes)
        )
    return EndpointSliceSpec(
        namespace,
        name,
        service_name,
        str(address_type),
        tuple(endpoints),
        tuple(ports),
        tuple(ignored),
    )


def _hint_names(hints: Mapping[str, Any], kind: str, path: str) -> frozenset[str]:
    """The names in hints.forZones or hints.forNodes."""
    names = []
    for j, hint in enumerate(read_list(hints.get(kind), f"{path}.{kind}")):
        names.append(
            read_string(
                read_mapping(hint, f"{path}.{kind}[{j}]").get("name"), f"{path}.{kind}[{j}].name"
            )
        )
    return frozenset(names)


# --- the snapshot the data path is programmed from ------------------------------------


@dataclass(frozen=True, order=True)
class Backend:
    ip: IPAddress
    port: int

    @property
    def name(self) -> str:
        """The Maglev name: ip:port, the same on every node."""
        host = f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    """One frontend, VIP:port/protocol, and the backends that get its new flows."""

    name: str  # namespace/service:port-name, as kube-proxy names service ports
    vip: IPAddress
    protocol: str
    port: int
    backends: tuple[Backend, ...]
    affinity_seconds: int = 0  # sessionAffinity ClientIP timeout; 0: none
    # Endpoints still in the service's slices but not chosen (terminating, not ready):
    # they get no new flows, and their open flows are left alone to finish.
    draining: tuple[Backend, ...] = ()
    # No backends here because internalTrafficPolicy is Local and the usable endpoints are
    # on other nodes: kube-proxy then drops new connections (the client times out), and
    # rejects them only when the service has no usable endpoint anywhere.
    no_local_endpoints: bool = False
    # Where it is served: ClusterIP, NodePort (on a node address), ExternalIP, LoadBalancer.
    kind: str = "ClusterIP"
    # How sources are told apart (nfqproxy.external): POLICY_INTERNAL for a ClusterIP.
    policy: str = "internal"
    # externalTrafficPolicy Local: backends above are this node's; the cluster's own pods
    # and the node itself go to these instead, as kube-proxy's EXT chain sends them.
    cluster_backends: tuple[Backend, ...] = ()
    source_ranges: tuple[IPNetwork, ...] = ()  # loadBalancerSourceRanges; (): any source
    # Backends above taken as the serving-and-terminating fallback (no Ready endpoint):
    # for `nfqproxy services` to say so.
    terminating: tuple[Backend, ...] = ()

    @property
    def address_port(self) -> str:
        host = f"[{self.vip}]" if self.vip.version == 6 else str(self.vip)
        return f"{host}:{self.port}/{self.protocol}"


ServicePortKey = tuple[IPAddress, str, int]


@dataclass(frozen=True)
class Snapshot:
    ports: Mapping[ServicePortKey, ServicePort] = field(default_factory=dict)
    # Frontends left out, and why: a VIP:port claimed twice, or too many backends.
    conflicts: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthCheck:
    """A healthCheckNodePort, and what it reports (nfqproxy.service_health)."""

    port: int
    local_endpoints: int  # distinct Ready endpoint addresses on this node


@dataclass(frozen=True)
class NodeView:
    """What the model needs to know about this node, beyond its name and zone."""

    nodeport_ips: tuple[IPAddress, ...] = ()  # --nodeport-addresses, resolved
