"""NodePorts, externalIPs, LoadBalancer ingress IPs and externalTrafficPolicy, with real
traffic from an external client on the uplink side (outside the cluster CIDR), from the
node itself and from a pod, to endpoints on this node and on a second one."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from nfqproxy_lab import netns
from nfqproxy_lab.netns import NetnsThread
from nfqproxy_lab.proxy import read_status
from nfqproxy_lab.topology import (
    CLIENT_IP,
    EXTERNAL_CLIENT_IP,
    HTTP_TARGET,
    NODE2_NAME,
    NODE_IP,
    NODE_NAME,
    REMOTE_BACKEND,
    REMOTE_BACKEND_IP,
    backend_ip,
)
from nfqproxy_lab.traffic import http_get, http_peers, http_status, udp_query
from tests.helpers.labs import RunningLab

pytestmark = pytest.mark.kernel

EXTERNAL_IP, LB_IP, FIREWALLED_LB_IP = "192.0.2.10", "203.0.113.10", "203.0.113.11"
HEALTH_PORT = 32000
MANIFEST = "external.yaml"
LOCAL_BACKEND = "be1"  # the lab's first backend, on this node


def service(name: str, vip: str, kind: str = "NodePort", **spec: Any) -> dict[str, Any]:
    ports = spec.pop("ports", [{"name": "http", "port": 80, "protocol": "TCP"}])
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": kind, "clusterIP": vip, "clusterIPs": [vip], "ports": ports, **spec},
    }
    ingress = spec.pop("ingress", None)
    obj["spec"].pop("ingress", None)
    if ingress:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ingress}]}}
    return obj


def endpoints(name: str, local: bool = True, remote: bool = True) -> dict[str, Any]:
    chosen = [(backend_ip(1), NODE_NAME)] if local else []
    chosen += [(REMOTE_BACKEND_IP, NODE2_NAME)] if remote else []
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": HTTP_TARGET, "protocol": "TCP"},
            {"name": "dns", "port": 5353, "protocol": "UDP"},
        ],
        "endpoints": [
            {"addresses": [ip], "nodeName": node, "conditions": {"ready": True}}
            for ip, node in chosen
        ],
    }


WITH_UDP = [
    {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
    {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
]


def manifests(
    cluster_type: str = "NodePort", local_endpoint_of_lb: bool = True
) -> list[dict[str, Any]]:
    np_ports = WITH_UDP if cluster_type == "NodePort" else [dict(p) for p in WITH_UDP]
    if cluster_type != "NodePort":
        for port in np_ports:
            port.pop("nodePort")
    return [
        service("np", "10.96.0.40", cluster_type, ports=np_ports),
        endpoints("np"),
        service(
            "npl",
            "10.96.0.41",
            externalTrafficPolicy="Local",
            ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30081}],
        ),
        endpoints("npl"),
        service(
            "remoteonly",
            "10.96.0.42",
            externalTrafficPolicy="Local",
            ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30082}],
        ),
        endpoints("remoteonly", local=False),
        service("eip", "10.96.0.43", "ClusterIP", externalIPs=[EXTERNAL_IP]),
        endpoints("eip"),
        service(
            "lb",
            "10.96.0.44",
            "LoadBalancer",
            externalTrafficPolicy="Local",
            healthCheckNodePort=HEALTH_PORT,
            ingress=LB_IP,
            ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30084}],
        ),
        endpoints("lb", local=local_endpoint_of_lb),
        service(
            "lbfw",
            "10.96.0.45",
            "LoadBalancer",
            ingress=FIREWALLED_LB_IP,
            loadBalancerSourceRanges=["10.0.0.0/8"],
            ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30085}],
        ),
        endpoints("lbfw"),
    ]


def write(running: RunningLab, documents: list[dict[str, Any]]) -> None:
    """Writes the manifest and waits for the sync that programs it."""
    syncs = read_status(running.lab).get("syncs", 0)
    path = running.lab.manifests_dir / MANIFEST
    path.write_text(yaml.safe_dump_all(documents))
    deadline = time.monotonic() + 5
    while read_status(running.lab).get("syncs", 0) <= syncs:
        assert time.monotonic() < deadline, "the external services were not synced"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def external(running_lab: RunningLab) -> Iterator[RunningLab]:
    """The module's lab with the external services."""
    write(running_lab, manifests())
    try:
        yield running_lab
    finally:
        (running_lab.lab.manifests_dir / MANIFEST).unlink(missing_ok=True)


def outside(running: RunningLab) -> NetnsThread:
    return running.external


def peers(thread: NetnsThread, host: str, port: int, count: int = 40) -> Counter[tuple[str, str]]:
    return thread.call(http_peers, host, port, count)


def times_out(thread: NetnsThread, host: str, port: int) -> bool:
    try:
        thread.call(http_get, host, port, 1.0)
    except TimeoutError:
        return True
    return False


def test_a_node_port_answers_an_external_client_over_tcp_and_udp(external: RunningLab) -> None:
    answers = peers(outside(external), NODE_IP, 30080)
    assert {name for name, _ in answers} == {LOCAL_BACKEND, REMOTE_BACKEND}, answers
    udp = {outside(external).call(udp_query, NODE_IP, 30053) for _ in range(20)}
    assert udp <= {LOCAL_BACKEND, REMOTE_BACKEND} and udp


def test_a_node_port_answers_the_node_itself_and_a_pod(external: RunningLab) -> None:
    for thread in (external.node, external.client):
        answers = peers(thread, NODE_IP, 30080, 20)
        assert {name for name, _ in answers} == {LOCAL_BACKEND, REMOTE_BACKEND}, answers


def test_cluster_policy_masquerades_external_clients_to_the_node(external: RunningLab) -> None:
    """externalTrafficPolicy Cluster: each backend sees one of the node's addresses (the
    one facing it), never the client's; replies flow back through the node."""
    node_addresses = {NODE_IP, "10.244.11.1"}  # the uplink side, and be1's link
    seen = {peer for _, peer in peers(outside(external), NODE_IP, 30080)}
    assert seen <= node_addresses and EXTERNAL_CLIENT_IP not in seen, seen


def test_local_policy_keeps_the_client_address_and_this_nodes_endpoints(
    external: RunningLab,
) -> None:
    answers = peers(outside(external), NODE_IP, 30081)
    assert set(answers) == {(LOCAL_BACKEND, EXTERNAL_CLIENT_IP)}, answers


def test_local_policy_sends_pods_to_every_endpoint_unmasqueraded(external: RunningLab) -> None:
    """kube-proxy's "pod to NodePort with eTP:Local": the pod traffic short-circuits to the
    cluster-wide endpoints, with its source kept."""
    answers = peers(external.client, NODE_IP, 30081)
    assert set(answers) == {(LOCAL_BACKEND, CLIENT_IP), (REMOTE_BACKEND, CLIENT_IP)}, answers


def test_local_policy_without_a_local_endpoint_drops_external_clients_only(
    external: RunningLab,
) -> None:
    assert times_out(outside(external), NODE_IP, 30082)
    assert external.client.call(http_get, NODE_IP, 30082) == REMOTE_BACKEND  # a pod still gets in


def test_cluster_ip_traffic_from_outside_the_cluster_cidr_is_masqueraded(
    external: RunningLab,
) -> None:
    """kube-proxy with a local traffic detector (--cluster-cidr): a ClusterIP reached from
    off the cluster is masqueraded; from a pod, the source is kept."""
    seen = {peer for _, peer in peers(outside(external), "10.96.0.40", 80, 20)}
    assert seen and seen <= {NODE_IP, "10.244.11.1"}, seen
    assert {peer for _, peer in peers(external.client, "10.96.0.40", 80, 20)} == {CLIENT_IP}


def test_an_external_ip_and_an_ingress_ip_are_served(external: RunningLab) -> None:
    answers = peers(outside(external), EXTERNAL_IP, 80, 20)
    assert {name for name, _ in answers} == {LOCAL_BACKEND, REMOTE_BACKEND}, answers
    lb = peers(outside(external), LB_IP, 80, 20)  # externalTrafficPolicy Local
    assert set(lb) == {(LOCAL_BACKEND, EXTERNAL_CLIENT_IP)}, lb


def test_load_balancer_source_ranges_drop_every_other_source(external: RunningLab) -> None:
    assert times_out(outside(external), FIREWALLED_LB_IP, 80)  # 198.51.100.2: not in 10/8
    assert external.client.call(http_get, FIREWALLED_LB_IP, 80) in {LOCAL_BACKEND, REMOTE_BACKEND}
    # The NodePort of the same service is not firewalled, as kube-proxy's TestLoadBalancer.
    assert outside(external).call(http_get, NODE_IP, 30085) in {LOCAL_BACKEND, REMOTE_BACKEND}


def test_the_health_check_node_port_follows_the_local_endpoints(external: RunningLab) -> None:
    status, headers, body = outside(external).call(http_status, NODE_IP, HEALTH_PORT)
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff", headers
    assert json.loads(body) == {
        "service": {"namespace": "default", "name": "lb"},
        "localEndpoints": 1,
        "serviceProxyHealthy": True,
    }
    try:
        write(external, manifests(local_endpoint_of_lb=False))
        status, headers, body = outside(external).call(http_status, NODE_IP, HEALTH_PORT)
        assert status == 503 and json.loads(body)["localEndpoints"] == 0, body
        assert headers["X-Load-Balancing-Endpoint-Weight"] == "0"
    finally:
        write(external, manifests())
    assert outside(external).call(http_status, NODE_IP, HEALTH_PORT)[0] == 200


def test_a_node_port_service_changed_to_cluster_ip_stops_answering_on_the_node_port(
    external: RunningLab,
) -> None:
    try:
        write(external, manifests(cluster_type="ClusterIP"))
        with pytest.raises(ConnectionRefusedError):  # no listener on the node: its own RST
            outside(external).call(http_get, NODE_IP, 30080)
        assert external.client.call(http_get, "10.96.0.40", 80) in {LOCAL_BACKEND, REMOTE_BACKEND}
    finally:
        write(external, manifests())
    assert outside(external).call(http_get, NODE_IP, 30080) in {LOCAL_BACKEND, REMOTE_BACKEND}


def test_a_port_in_the_node_port_range_with_no_service_is_left_alone(
    external: RunningLab,
) -> None:
    """A program of the node's own listening there is reached, not rejected."""
    lab = external.lab
    ready = lab.dir / "node-listener.ready"
    command = [sys.executable, "-m", "nfqproxy", "lab", "serve", "--name", "node"]
    command += ["--tcp-port", "30999", "--udp-port", "30999", "--ready-file", str(ready)]
    process = lab.start_process("node-listener", netns.exec_command(lab.node_ns, command))
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline and process.poll() is None, "no listener"
            time.sleep(0.05)
        assert outside(external).call(http_get, NODE_IP, 30999) == "node"
    finally:
        process.terminate()
        process.wait(5)


def test_the_status_says_what_is_served_on_which_address(external: RunningLab) -> None:
    exposure = read_status(external.lab)["exposure"]
    assert exposure["nodeport_addresses"] == [NODE_IP]
    served = exposure["served"]
    assert served[f"{NODE_IP}:30081/TCP"] == "NodePort default/npl:http (external-local)"
    assert served[f"{LB_IP}:80/TCP"] == "LoadBalancer default/lb:http (external-local)"
    assert served[f"{EXTERNAL_IP}:80/TCP"] == "ExternalIP default/eip:http (external-cluster)"
    assert exposure["health_checks"][f"0.0.0.0:{HEALTH_PORT}"]["localEndpoints"] == 1
    _, _, metrics = external.node.call(http_status, "127.0.0.1", 10249, 3.0, "/metrics")
    # np (TCP and UDP), npl, remoteonly, lb and lbfw on the node; eip and two ingress IPs.
    assert 'nfqproxy_external_frontends{kind="NodePort"} 6.0' in metrics
    assert 'nfqproxy_external_frontends{kind="LoadBalancer"} 2.0' in metrics
