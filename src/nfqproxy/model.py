"""The model: which endpoints get traffic for each service port, on each of its addresses.

It reads Service and EndpointSlice objects as the API serves them (plain dicts) and
applies kube-proxy's rules, as pkg/proxy's endpointslicecache.go and topology.go
(CategorizeEndpoints) state them: for the ClusterIPs here, and for the external addresses
(NodePorts, externalIPs, LoadBalancer ingress IPs) in nfqproxy.external. Validation lives
here too, so that a manifest file, an API watch and a test all reject the same objects
with the same message, naming the field at fault."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"

# RFC 1035 / RFC 1123 labels, as Kubernetes validates names.
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
MAX_ENDPOINTS_PER_SLICE = 1000  # the API server's maxItems for EndpointSlice.endpoints
MAX_BACKENDS_PER_PORT = 65534  # Maglev slots hold uint16 backend indexes
DEFAULT_AFFINITY_SECONDS = 10800  # the API's default for sessionAffinity ClientIP
MAX_AFFINITY_SECONDS = 86400  # the API's limit


# (namespace, name): how every source and the tracker key an object.
ObjectKey = tuple[str, str]
# A manifest without metadata.namespace means the default namespace, as kubectl applies it;
# objects from the API always carry theirs.
DEFAULT_NAMESPACE = "default"


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return ("", "")
    return (str(meta.get("namespace", DEFAULT_NAMESPACE)), str(meta.get("name", "")))


class ObjectError(ValueError):
    """An object that cannot be used, with the path of the field at fault."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


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
    return f"{_printable(kind)} {_printable(ns)}/{_printable(name)}"


def _printable(value: object) -> str:
    """value for a log line: hostile names must not forge lines or colour terminals."""
    text = value if isinstance(value, str) else repr(value)
    return ascii(text[:64])[1:-1] + ("..." if len(text) > 64 else "")


# --- field readers: each names the field path in its error ---------------------------


def _mapping(value: object, path: str, required: bool = True) -> Mapping[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise ObjectError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _list(value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ObjectError(path, f"must be a list, got {type(value).__name__}")
    return value


def _string(value: object, path: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise ObjectError(path, f"must be a string, got {type(value).__name__}")
    if pattern is not None and not pattern.match(value):
        raise ObjectError(path, f"{value[:80]!r} is not a valid name ({pattern.pattern})")
    return value


def _port(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ObjectError(path, f"must be an integer port, got {value!r:.40}")
    if not 1 <= value <= 65535:
        raise ObjectError(path, f"{value} is out of range 1-65535")
    return value


def _protocol(value: object, path: str) -> str:
    protocol = "TCP" if value is None else value
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:  # a list is unhashable
        raise ObjectError(path, f"{protocol!r:.40} is not one of TCP, UDP, SCTP")
    return str(protocol)


def _ip(value: object, path: str) -> IPAddress:
    if not isinstance(value, str):
        raise ObjectError(path, f"must be an IP address string, got {type(value).__name__}")
    try:
        # The common case in C: a canonical dotted quad, which is exactly what
        # ipaddress accepts for IPv4. Anything else takes ipaddress's own parser.
        packed = socket.inet_pton(socket.AF_INET, value)
        if socket.inet_ntop(socket.AF_INET, packed) == value:
            return IPv4Address(packed)
    except (OSError, ValueError):  # not IPv4, or not even text inet_pton takes (a NUL)
        pass
    try:
        return ip_address(value)
    except ValueError:
        raise ObjectError(path, f"{value[:80]!r} is not a valid IP address") from None


def _bool(value: object, path: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ObjectError(path, f"must be true or false, got {value!r:.40}")
    return value


def _metadata(obj: Mapping[str, Any], name_pattern: re.Pattern[str]) -> tuple[str, str]:
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _string(meta.get("name"), "metadata.name", name_pattern)
    namespace = _string(
        meta.get("namespace", DEFAULT_NAMESPACE), "metadata.namespace", DNS_1123_LABEL
    )
    labels = _mapping(meta.get("labels"), "metadata.labels", required=False)
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ObjectError(f"metadata.labels[{key!r:.64}]", "labels must map strings to strings")
    return namespace, name


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
    namespace, name = _metadata(obj, DNS_1035_LABEL)
    labels = _mapping(obj["metadata"].get("labels"), "metadata.labels", required=False)
    spec = _mapping(obj.get("spec"), "spec")
    svc_type = spec.get("type", "ClusterIP")
    if not isinstance(svc_type, str) or svc_type not in SERVICE_TYPES:
        raise ObjectError("spec.type", f"{svc_type!r:.40} is not a known Service type")

    skip_reason = None
    if labels.get(LABEL_SERVICE_PROXY_NAME) != service_proxy_name:
        # kube-proxy serves unlabelled services, or with --service-proxy-name only its own.
        skip_reason = f"{LABEL_SERVICE_PROXY_NAME} is not {service_proxy_name or 'absent'}"
    elif svc_type == "ExternalName":
        skip_reason = "type ExternalName"

    raw_ips: list[Any] = _list(spec.get("clusterIPs"), "spec.clusterIPs")
    ip_path = "spec.clusterIPs[{}]"
    single = spec.get("clusterIP")
    if single not in (None, "", "None"):
        _ip(single, "spec.clusterIP")
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
    cluster_ips = []
    for i, raw in enumerate(raw_ips):
        path = ip_path.format(i)
        vip = _ip(raw, path)
        family_ranges = [cidr for cidr in cidrs if cidr.version == vip.version]
        if not family_ranges:
            continue  # e.g. the IPv6 half of a dual-stack service on an IPv4-only proxy
        if skip_reason is None and not any(vip in cidr for cidr in family_ranges):
            ranges = ", ".join(str(c) for c in family_ranges)
            raise ObjectError(path, f"{vip} is outside the service range ({ranges})")
        cluster_ips.append(vip)

    ports = []
    raw_ports = _list(spec.get("ports"), "spec.ports")
    seen: set[tuple[str, int]] = set()
    for i, raw_port in enumerate(raw_ports):
        base = f"spec.ports[{i}]"
        port_spec = _mapping(raw_port, base)
        port_name = port_spec.get("name", "")
        if port_name != "" or len(raw_ports) > 1:
            _string(port_name, f"{base}.name", PORT_NAME)
        protocol = _protocol(port_spec.get("protocol"), f"{base}.protocol")
        port = _port(port_spec.get("port"), f"{base}.port")
        if (protocol, port) in seen:
            raise ObjectError(f"{base}.port", f"{protocol} {port} is listed twice")
        seen.add((protocol, port))
        node_port = 0
        if svc_type in ("NodePort", "LoadBalancer") and port_spec.get("nodePort") is not None:
            # allocateLoadBalancerNodePorts: false leaves a LoadBalancer without them.
            node_port = _port(port_spec.get("nodePort"), f"{base}.nodePort")
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
        for i, raw in enumerate(_list(spec.get("externalIPs"), "spec.externalIPs"))
        if (address := _ip(raw, f"spec.externalIPs[{i}]")).version in families
    ]
    health_check_node_port = 0
    if svc_type == "LoadBalancer" and spec.get("healthCheckNodePort") not in (None, 0):
        health_check_node_port = _port(spec["healthCheckNodePort"], "spec.healthCheckNodePort")
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
    status = _mapping(obj.get("status"), "status", required=False)
    balancer = _mapping(status.get("loadBalancer"), "status.loadBalancer", required=False)
    found: list[IPAddress] = []
    for i, raw in enumerate(_list(balancer.get("ingress"), "status.loadBalancer.ingress")):
        base = f"status.loadBalancer.ingress[{i}]"
        ingress = _mapping(raw, base)
        if ingress.get("ip") in (None, ""):
            continue  # a hostname only: the load balancer resolves it, not us
        address = _ip(ingress["ip"], f"{base}.ip")
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
    for i, raw in enumerate(_list(spec.get("loadBalancerSourceRanges"), path)):
        text = _string(raw, f"{path}[{i}]").strip()
        try:
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
    config = _mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig", False)
    client_ip = _mapping(
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
    namespace, name = _metadata(obj, DNS_1123_SUBDOMAIN)
    labels = _mapping(obj["metadata"].get("labels"), "metadata.labels", required=False)
    service_name = labels.get(LABEL_SERVICE_NAME)
    if service_name is not None:
        _string(service_name, f"metadata.labels[{LABEL_SERVICE_NAME}]", DNS_1035_LABEL)
    address_type = obj.get("addressType")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise ObjectError("addressType", f"{address_type!r:.40} is not IPv4, IPv6 or FQDN")

    ports, ignored = [], []
    for i, raw_port in enumerate(_list(obj.get("ports"), "ports")):
        base = f"ports[{i}]"
        port_spec = _mapping(raw_port, base)
        port_name = port_spec.get("name")
        if port_name:
            _string(port_name, f"{base}.name", PORT_NAME)
        elif port_name is not None and port_name != "":
            raise ObjectError(f"{base}.name", f"must be a string, got {port_name!r:.40}")
        protocol = _protocol(port_spec.get("protocol"), f"{base}.protocol")
        number = port_spec.get("port")
        # kube-proxy skips such a port and uses the rest of the slice.
        if port_name is None:
            ignored.append(f'{base}.name: absent, so kube-proxy ignores this port (write name: "")')
        elif number is None or number == 0:
            given = "absent" if number is None else "0"
            ignored.append(f"{base}.port: {given}, so kube-proxy ignores this port")
        else:
            ports.append(SlicePortSpec(port_name, protocol, _port(number, f"{base}.port")))

    raw_endpoints = _list(obj.get("endpoints"), "endpoints")
    if len(raw_endpoints) > MAX_ENDPOINTS_PER_SLICE:
        raise ObjectError(
            "endpoints", f"{len(raw_endpoints)} endpoints exceed the API's limit of 1000 per slice"
        )
    endpoints = []
    for i, raw_endpoint in enumerate(raw_endpoints):
        base = f"endpoints[{i}]"
        endpoint = _mapping(raw_endpoint, base)
        addresses: list[IPAddress] = []
        raw_addresses = _list(endpoint.get("addresses"), f"{base}.addresses")
        if not raw_addresses:
            raise ObjectError(f"{base}.addresses", "must list at least one address")
        if address_type != "FQDN":
            want = 4 if address_type == "IPv4" else 6
            for j, raw in enumerate(raw_addresses):
                address = _ip(raw, f"{base}.addresses[{j}]")
                if address.version != want:
                    raise ObjectError(f"{base}.addresses[{j}]", f"{address} is not {address_type}")
                addresses.append(address)
        conditions = _mapping(endpoint.get("conditions"), f"{base}.conditions", required=False)
        # As kube-proxy reads them: an absent 'ready' or 'serving' is true, an absent
        # 'terminating' false.
        ready = _bool(conditions.get("ready"), f"{base}.conditions.ready", True)
        serving = _bool(conditions.get("serving"), f"{base}.conditions.serving", True)
        terminating = _bool(conditions.get("terminating"), f"{base}.conditions.terminating", False)
        node_name = endpoint.get("nodeName")
        if node_name is not None:
            _string(node_name, f"{base}.nodeName", DNS_1123_SUBDOMAIN)
        hints = _mapping(endpoint.get("hints"), f"{base}.hints", required=False)
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
    for j, hint in enumerate(_list(hints.get(kind), f"{path}.{kind}")):
        names.append(
            _string(_mapping(hint, f"{path}.{kind}[{j}]").get("name"), f"{path}.{kind}[{j}].name")
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
