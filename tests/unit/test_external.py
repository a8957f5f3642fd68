"""NodePorts, externalIPs, LoadBalancer ingress IPs and externalTrafficPolicy, as kube-proxy
serves them. Each case names the kube-proxy test it follows: pkg/proxy/topology_test.go
(TestCategorizeEndpoints) for the endpoints chosen, and the proxiers' packet-flow tables
(TestInternalExternalMasquerade, TestExternalTrafficPolicyLocal, TestLoadBalancer,
TestNoEndpointsReject) for who reaches which endpoints, masqueraded or not. The routing
cases run on every data path, from the packet's source bits to the backend chosen."""

from __future__ import annotations

from ipaddress import IPv4Network, ip_address
from typing import Any

import dpkt
import pytest

from nfqproxy import ipsets
from nfqproxy.control import views
from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.marks import SOURCE_NODE, SOURCE_OFF_CLUSTER, SOURCE_POD
from nfqproxy.datapath.verdicts import Action
from nfqproxy.exposure import Exposure
from nfqproxy.fields import ObjectError
from nfqproxy.model import NodeView, ServicePort, Snapshot, parse_service
from nfqproxy.tracker import ChangeTracker
from nfqproxy_lab.packets import tcp_packet

CIDRS = [IPv4Network("10.96.0.0/12")]
NODE_IP, LB_IP, EXTERNAL_IP = "192.168.0.1", "203.0.113.1", "192.0.2.9"
LOCAL, REMOTE = "10.244.1.5", "10.244.2.5"  # endpoints on this node and on another
# The clients of kube-proxy's tables, as the hooks' rules mark them (with --cluster-cidr).
POD, NODE, EXTERNAL = SOURCE_POD, SOURCE_NODE | SOURCE_OFF_CLUSTER, SOURCE_OFF_CLUSTER
NO_DETECTOR = 0  # a pod's packet when no --cluster-cidr says what a pod is
SOURCE_ADDRESS = {
    POD: "10.244.9.9",
    NODE: NODE_IP,
    EXTERNAL: "198.51.100.7",
    NO_DETECTOR: "10.244.9.9",
}


def service(
    external_policy: str = "Cluster",
    internal_policy: str = "Cluster",
    kind: str = "LoadBalancer",
    **extra: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": kind,
        "clusterIP": "10.96.0.10",
        "externalTrafficPolicy": external_policy,
        "internalTrafficPolicy": internal_policy,
        "externalIPs": [EXTERNAL_IP],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
        **extra,
    }
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": spec,
    }
    if kind == "LoadBalancer":
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    return obj


def endpoint_slice(*endpoints: tuple[str, str, dict[str, bool]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "nodeName": node, "conditions": conditions}
            for ip, node, conditions in endpoints
        ],
    }


READY = {"ready": True, "serving": True, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}
BOTH = (endpoint_slice((LOCAL, "node-a", READY), (REMOTE, "node-b", READY)),)


def tracker_for(svc: dict[str, Any], *slices: dict[str, Any]) -> ChangeTracker:
    tracker = ChangeTracker(CIDRS, node_name="node-a")
    tracker.set_node_view(NodeView((ip_address(NODE_IP),)))
    tracker.replace_all([svc], list(slices))
    tracker.flush()
    return tracker


def frontends(svc: dict[str, Any], *slices: dict[str, Any]) -> dict[str, ServicePort]:
    """The frontends by kind."""
    return {port.kind: port for port in tracker_for(svc, *slices).ports.values()}


def reached(datapath: Datapath, port: ServicePort, source: int) -> tuple[set[str], bool]:
    """The backends 64 new connections from that source reach, and whether each was
    masqueraded (they must all agree)."""
    backends, masquerades = set(), set()
    for client_port in range(40000, 40064):
        raw = tcp_packet(SOURCE_ADDRESS[source], client_port, str(port.vip), port.port)
        verdict = datapath.process(raw, source)
        if verdict.action is not Action.ACCEPT:
            return {verdict.action.value + " " + verdict.reason}, False
        assert verdict.payload is not None
        backends.add(str(ip_address(dpkt.ip.IP(verdict.payload).dst)))
        masquerades.add(verdict.masquerade)
    (masquerade,) = masquerades
    return backends, masquerade


# --- which frontends a service has -------------------------------------------------------


def test_a_load_balancer_is_served_on_its_cluster_ip_node_port_external_ip_and_ingress_ip() -> None:
    ports = frontends(service(), *BOTH)
    assert {kind: port.address_port for kind, port in ports.items()} == {
        "ClusterIP": "10.96.0.10:80/TCP",
        "NodePort": f"{NODE_IP}:30080/TCP",
        "ExternalIP": f"{EXTERNAL_IP}:80/TCP",
        "LoadBalancer": f"{LB_IP}:80/TCP",
    }


def test_an_ingress_ip_with_ip_mode_proxy_or_only_a_hostname_is_not_captured() -> None:
    """TestLoadBalancerIngressRouteTypeProxy: kube-proxy's LoadBalancerVIPs skip ipMode
    Proxy, whose traffic the load balancer delivers to the node itself."""
    svc = service()
    svc["status"]["loadBalancer"]["ingress"] = [
        {"ip": LB_IP, "ipMode": "Proxy"},
        {"hostname": "lb.example.com"},
    ]
    assert "LoadBalancer" not in frontends(svc, *BOTH)


def test_a_node_port_service_changed_to_cluster_ip_loses_its_node_port() -> None:
    tracker = tracker_for(service(kind="NodePort"), *BOTH)
    assert any(p.kind == "NodePort" for p in tracker.ports.values())
    svc = service(kind="ClusterIP")
    del svc["spec"]["ports"][0]["nodePort"], svc["spec"]["externalIPs"]
    tracker.replace_all([svc], list(BOTH))
    changes = tracker.flush()
    assert [p.kind for p in tracker.ports.values()] == ["ClusterIP"]
    assert (ip_address(NODE_IP), "TCP", 30080) in changes.ports  # removed: None
    assert changes.ports[(ip_address(NODE_IP), "TCP", 30080)] is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("externalTrafficPolicy", "Everywhere", "spec.externalTrafficPolicy"),
        ("loadBalancerSourceRanges", ["10.0.0.0/33"], r"loadBalancerSourceRanges\[0\]"),
        ("externalIPs", ["not-an-ip"], r"spec.externalIPs\[0\]"),
        ("healthCheckNodePort", 70000, "spec.healthCheckNodePort"),
    ],
)
def test_a_hostile_external_field_is_refused_naming_it(
    field: str, value: object, message: str
) -> None:
    svc = service(external_policy="Local")
    svc["spec"][field] = value
    with pytest.raises(ObjectError, match=message):
        parse_service(svc, CIDRS)


def test_a_bad_node_port_is_refused_naming_its_field() -> None:
    svc = service()
    svc["spec"]["ports"][0]["nodePort"] = "30080; reboot"
    with pytest.raises(ObjectError, match=r"spec.ports\[0\].nodePort"):
        parse_service(svc, CIDRS)


# --- who reaches which endpoints, masqueraded or not -------------------------------------

# (kube-proxy's case, externalTrafficPolicy, frontend kind, source, endpoints, masqueraded)
ROUTING = [
    ("pod to ClusterIP", "Cluster", "ClusterIP", POD, {LOCAL, REMOTE}, False),
    (
        "node to ClusterIP (off-cluster: masqueraded)",
        "Cluster",
        "ClusterIP",
        NODE,
        {LOCAL, REMOTE},
        True,
    ),
    ("external to ClusterIP", "Cluster", "ClusterIP", EXTERNAL, {LOCAL, REMOTE}, True),
    ("pod to NodePort", "Cluster", "NodePort", POD, {LOCAL, REMOTE}, True),
    ("node to NodePort", "Cluster", "NodePort", NODE, {LOCAL, REMOTE}, True),
    ("external to NodePort", "Cluster", "NodePort", EXTERNAL, {LOCAL, REMOTE}, True),
    ("external to LB", "Cluster", "LoadBalancer", EXTERNAL, {LOCAL, REMOTE}, True),
    ("pod to NodePort with eTP:Local", "Local", "NodePort", POD, {LOCAL, REMOTE}, False),
    ("pod to LB with eTP:Local", "Local", "LoadBalancer", POD, {LOCAL, REMOTE}, False),
    (
        "pod to external IP hits both endpoints, unmasqueraded",
        "Local",
        "ExternalIP",
        POD,
        {LOCAL, REMOTE},
        False,
    ),
    ("node to NodePort with eTP:Local", "Local", "NodePort", NODE, {LOCAL, REMOTE}, True),
    ("node to LB with eTP:Local", "Local", "LoadBalancer", NODE, {LOCAL, REMOTE}, True),
    ("external to NodePort with eTP:Local", "Local", "NodePort", EXTERNAL, {LOCAL}, False),
    (
        "external to LB IP hits only local endpoint, unmasqueraded",
        "Local",
        "LoadBalancer",
        EXTERNAL,
        {LOCAL},
        False,
    ),
    (
        "external to external IP hits only local endpoint, unmasqueraded",
        "Local",
        "ExternalIP",
        EXTERNAL,
        {LOCAL},
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "policy", "kind", "source", "expected", "masquerade"),
    ROUTING,
    ids=[row[0] for row in ROUTING],
)
def test_sources_reach_the_endpoints_kube_proxy_sends_them_to(
    datapath: Datapath,
    case: str,
    policy: str,
    kind: str,
    source: int,
    expected: set[str],
    masquerade: bool,
) -> None:
    """TestInternalExternalMasquerade and TestExternalTrafficPolicyLocal, one row each."""
    ports = tracker_for(service(external_policy=policy), *BOTH).ports
    datapath.apply(Snapshot(dict(ports)))
    port = next(p for p in ports.values() if p.kind == kind)
    assert reached(datapath, port, source) == (expected, masquerade), case


def test_without_a_local_traffic_detector_pods_to_a_local_node_port_stay_on_this_node(
    datapath: Datapath,
) -> None:
    """TestInternalExternalMasquerade, variant "no LocalTrafficDetector": no --cluster-cidr,
    so no pod bit, and a pod is just another source: this node's endpoint, and ClusterIP
    traffic is not masqueraded for anyone."""
    ports = tracker_for(service(external_policy="Local"), *BOTH).ports
    datapath.apply(Snapshot(dict(ports)))
    by_kind = {p.kind: p for p in ports.values()}
    assert reached(datapath, by_kind["NodePort"], NO_DETECTOR) == ({LOCAL}, False)
    assert reached(datapath, by_kind["ClusterIP"], NO_DETECTOR) == ({LOCAL, REMOTE}, False)


def test_both_policies_local_send_pods_to_the_cluster_and_cluster_ips_to_this_node(
    datapath: Datapath,
) -> None:
    """topology_test.go "iTP: Local, eTP: Local, some endpoints local": clusterEndpoints
    both, localEndpoints the local one. The ClusterIP follows internalTrafficPolicy; pods
    and the node reaching an external address follow the cluster policy."""
    ports = tracker_for(service("Local", "Local"), *BOTH).ports
    datapath.apply(Snapshot(dict(ports)))
    by_kind = {p.kind: p for p in ports.values()}
    assert reached(datapath, by_kind["ClusterIP"], POD) == ({LOCAL}, False)
    assert reached(datapath, by_kind["NodePort"], POD) == ({LOCAL, REMOTE}, False)
    assert reached(datapath, by_kind["NodePort"], EXTERNAL) == ({LOCAL}, False)


def test_external_traffic_with_only_remote_endpoints_is_dropped_and_with_none_rejected(
    datapath: Datapath,
) -> None:
    """TestTerminatingEndpointsTrafficPolicyLocal "external to LB, no locally-usable
    endpoints" (DROP), and TestNoEndpointsReject (REJECT)."""
    remote_only = tracker_for(service("Local"), endpoint_slice((REMOTE, "node-b", READY))).ports
    datapath.apply(Snapshot(dict(remote_only)))
    lb = next(p for p in remote_only.values() if p.kind == "LoadBalancer")
    assert reached(datapath, lb, EXTERNAL) == ({"drop no_local_endpoints"}, False)
    assert reached(datapath, lb, POD) == ({REMOTE}, False)  # pods still short-circuit
    empty = tracker_for(service("Local")).ports
    datapath.apply(Snapshot(dict(empty)))
    assert reached(datapath, lb, EXTERNAL) == ({"reject no_endpoints"}, False)


def test_terminating_local_endpoints_serve_external_traffic_when_no_local_one_is_ready(
    datapath: Datapath,
) -> None:
    """TestTerminatingEndpointsTrafficPolicyLocal "only terminating endpoints exist":
    external to LB reaches the local serving-terminating endpoint; pods reach the ready
    remote one (the cluster policy prefers Ready)."""
    slices = endpoint_slice((LOCAL, "node-a", TERMINATING), (REMOTE, "node-b", READY))
    ports = tracker_for(service("Local"), slices).ports
    datapath.apply(Snapshot(dict(ports)))
    lb = next(p for p in ports.values() if p.kind == "LoadBalancer")
    assert reached(datapath, lb, EXTERNAL) == ({LOCAL}, False)
    assert reached(datapath, lb, POD) == ({REMOTE}, False)
    # `nfqproxy services` says the external frontends serve from the fallback, too.
    for external in (p for p in ports.values() if p.kind != "ClusterIP"):
        row = views.service_row(external, datapath)
        assert [(b["endpoint"], b["state"]) for b in row["backends"]] == [
            (f"{LOCAL}:8080", "serving-terminating")
        ], external.kind


def test_a_local_endpoint_that_is_not_ready_serves_no_one(datapath: Datapath) -> None:
    """topology_test.go: an endpoint neither ready nor serving is no endpoint at all. With
    the only local one not ready, external traffic to a Local NodePort is dropped (usable
    endpoints elsewhere), and pods reach the ready remote one."""
    not_ready = {"ready": False, "serving": False, "terminating": False}
    slices = endpoint_slice((LOCAL, "node-a", not_ready), (REMOTE, "node-b", READY))
    ports = tracker_for(service("Local"), slices).ports
    datapath.apply(Snapshot(dict(ports)))
    node_port = next(p for p in ports.values() if p.kind == "NodePort")
    assert reached(datapath, node_port, EXTERNAL) == ({"drop no_local_endpoints"}, False)
    assert reached(datapath, node_port, POD) == ({REMOTE}, False)
    cluster = next(
        p for p in frontends(service("Cluster"), slices).values() if p.kind == "NodePort"
    )
    datapath.apply(Snapshot(dict(tracker_for(service("Cluster"), slices).ports)))
    assert reached(datapath, cluster, EXTERNAL) == ({REMOTE}, True)


def test_a_new_connection_on_a_5_tuple_still_in_the_table_is_masqueraded_again(
    datapath: Datapath,
) -> None:
    """The kernel masquerades on a connection's first packet. A client that reuses its
    source port while the old flow is still in the table (its server closed first, so the
    client has no TIME_WAIT) starts a new conntrack entry on a known flow: the masquerade
    must come with the flow, or a remote backend answers the client directly. (Found by
    the kernel test: one in 20 connections to an external IP timed out.)"""
    ports = tracker_for(service(), *BOTH).ports
    datapath.apply(Snapshot(dict(ports)))
    syn = tcp_packet(SOURCE_ADDRESS[EXTERNAL], 45000, EXTERNAL_IP, 80)
    first, again = datapath.process(syn, EXTERNAL), datapath.process(syn, EXTERNAL)
    assert (first.reason, first.masquerade) == ("new_flow", True)
    assert (again.reason, again.masquerade) == ("request", True)
    assert again.payload == first.payload


def test_a_flow_to_a_remote_endpoint_through_the_cluster_variant_survives_a_change(
    datapath: Datapath,
) -> None:
    """A pod's flow through an externalTrafficPolicy Local frontend went to the cluster
    variant's endpoint: an unrelated change must not retire it as gone."""
    ports = tracker_for(service("Local"), *BOTH).ports
    datapath.apply(Snapshot(dict(ports)))
    node_port = next(p for p in ports.values() if p.kind == "NodePort")
    flows = []
    for client_port in range(41000, 41032):
        raw = tcp_packet(SOURCE_ADDRESS[POD], client_port, NODE_IP, 30080)
        verdict = datapath.process(raw, POD)
        assert verdict.payload is not None
        flows.append((client_port, str(ip_address(dpkt.ip.IP(verdict.payload).dst))))
    assert {backend for _, backend in flows} == {LOCAL, REMOTE}
    # The same endpoints, one more label on the service: every frontend is rebuilt.
    changed = tracker_for(service("Local", sessionAffinity="None"), *BOTH).ports
    datapath.apply(Snapshot(dict(changed)))
    for client_port, backend in flows:
        raw = tcp_packet(SOURCE_ADDRESS[POD], client_port, NODE_IP, 30080, dpkt.tcp.TH_ACK)
        verdict = datapath.process(raw, POD)
        assert verdict.action is Action.ACCEPT and verdict.payload is not None
        assert str(ip_address(dpkt.ip.IP(verdict.payload).dst)) == backend
    assert node_port.cluster_backends


# --- the hooks' sets and the health check -------------------------------------------------


def test_the_sets_hold_every_external_frontend_and_the_firewall_its_source_ranges() -> None:
    """TestLoadBalancer: loadBalancerSourceRanges apply to the ingress IP only, not to the
    NodePort or the external IP ("nodePort bypasses LoadBalancerSourceRanges")."""
    svc = service(loadBalancerSourceRanges=["198.51.100.0/24", "0.0.0.0/0"])
    contents = ipsets.set_contents(frontends(svc, *BOTH).values())
    assert contents.frontends == {
        f"{NODE_IP},tcp:30080",
        f"{EXTERNAL_IP},tcp:80",
        f"{LB_IP},tcp:80",
    }
    assert contents.firewalled == {f"{LB_IP},tcp:80"}
    assert contents.allowed == {
        f"{LB_IP},tcp:80,198.51.100.0/24",
        f"{LB_IP},tcp:80,0.0.0.0/1",  # ipset takes no /0: its two halves
        f"{LB_IP},tcp:80,128.0.0.0/1",
    }


def test_the_health_check_counts_local_ready_endpoints_only() -> None:
    """TestHealthCheckNodePortWhenTerminating: serving-terminating endpoints do not count;
    a Cluster policy service needs no health check."""
    svc = service("Local", healthCheckNodePort=32000)
    slices = endpoint_slice(
        (LOCAL, "node-a", READY), ("10.244.1.6", "node-a", TERMINATING), (REMOTE, "node-b", READY)
    )
    checks = tracker_for(svc, slices).health_checks
    assert {k: (c.port, c.local_endpoints) for k, c in checks.items()} == {
        ("shop", "web"): (32000, 1)
    }
    assert tracker_for(service("Cluster", healthCheckNodePort=32000), slices).health_checks == {}


def test_the_status_lists_external_frontends_of_both_families() -> None:
    """Addresses of two families do not compare: the list is ordered by family first."""
    exposure = Exposure(("primary",), (), None, lambda: True, 30.0, versions=(4, 6))
    for address in ("fd00::1", "10.0.0.1"):
        vip = ip_address(address)
        exposure.external[(vip, "TCP", 30080)] = ServicePort(
            "d/web:http", vip, "TCP", 30080, (), kind="NodePort", policy="external-cluster"
        )
    served = exposure.status()["served"]
    assert isinstance(served, dict)
    assert list(served) == ["10.0.0.1:30080/TCP", "[fd00::1]:30080/TCP"]
