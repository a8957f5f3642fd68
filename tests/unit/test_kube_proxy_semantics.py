"""kube-proxy's answers where nfqproxy once chose differently, stated as tests, with the
neighbouring cases of kube-proxy's tables that pin each rule. The expected results come
from kube-proxy's pkg/proxy: topology.go (CategorizeEndpoints, topologyModeFromHints),
endpointslicecache.go (conditions, ports, localness) and their unit-test tables. Each
test names the case it follows."""

from __future__ import annotations

from ipaddress import IPv4Network, ip_address
from typing import Any

import pytest
import yaml

from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.verdicts import Action
from nfqproxy.model import ServicePort, Snapshot, parse_endpoint_slice, parse_service
from nfqproxy.sources.manifests import load_manifest_file
from nfqproxy.tracker import ChangeTracker, build_snapshot
from nfqproxy_lab.packets import tcp_packet, udp_packet

CIDRS = [IPv4Network("10.96.0.0/12")]
SERVICE = """
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIP: 10.96.0.10
  internalTrafficPolicy: {policy}
  ports: [{{name: http, port: 80, protocol: TCP}}]
"""


def endpoint_slice(endpoints: list[dict[str, Any]], ports: str = "") -> str:
    return f"""
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: {ports or "[{name: http, port: 8080, protocol: TCP}]"}
endpoints: {yaml.safe_dump(endpoints, default_flow_style=True).strip()}
"""


def endpoint(
    last: int,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    node: str | None = None,
    zones: tuple[str, ...] = (),
    nodes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Conditions left out when None, as the API leaves them out."""
    conditions = {"ready": ready, "serving": serving, "terminating": terminating}
    doc: dict[str, Any] = {
        "addresses": [f"10.1.0.{last}"],
        "conditions": {k: v for k, v in conditions.items() if v is not None},
    }
    if node is not None:
        doc["nodeName"] = node
    hints = {}
    if zones:
        hints["forZones"] = [{"name": z} for z in zones]
    if nodes:
        hints["forNodes"] = [{"name": n} for n in nodes]
    if hints:
        doc["hints"] = hints
    return doc


def frontend(
    endpoints: list[dict[str, Any]],
    policy: str = "Cluster",
    node: str | None = "node-a",
    zone: str | None = None,
) -> ServicePort:
    docs = list(yaml.safe_load_all(SERVICE.format(policy=policy) + endpoint_slice(endpoints)))
    snapshot = build_snapshot(
        [parse_service(docs[0], CIDRS)], [parse_endpoint_slice(docs[1])], node, zone
    )
    (port,) = snapshot.ports.values()
    return port


def chosen(port: ServicePort) -> list[int]:
    return sorted(int(str(b.ip).rsplit(".", 1)[1]) for b in port.backends)


# --- 1. internalTrafficPolicy Local with endpoints only on other nodes: drop, not reject


def test_local_policy_with_ready_endpoints_only_on_other_nodes_drops() -> None:
    """TestCategorizeEndpoints "internalTrafficPolicy: Local, but all endpoints are
    remote": no local endpoints, hasAnyEndpoints true, so the proxier DROPs."""
    port = frontend([endpoint(1, node="node-b"), endpoint(2, node="node-c")], "Local")
    assert port.backends == () and port.no_local_endpoints


def test_local_policy_with_remote_terminating_endpoints_still_drops() -> None:
    """ "iTP: Local ... all endpoints remote and terminating": serving-terminating
    endpoints elsewhere count as usable, so still a drop."""
    remote = endpoint(1, ready=False, serving=True, terminating=True, node="node-b")
    assert frontend([remote], "Local").no_local_endpoints


@pytest.mark.parametrize(
    "endpoints",
    [[], [endpoint(1, ready=False, serving=False, node="node-b")]],
    ids=["no endpoints", "none usable"],
)
def test_local_policy_without_a_usable_endpoint_anywhere_rejects(
    endpoints: list[dict[str, Any]],
) -> None:
    port = frontend(endpoints, "Local")
    assert port.backends == () and not port.no_local_endpoints


def test_cluster_policy_never_drops_for_want_of_local_endpoints() -> None:
    assert not frontend([], "Cluster").no_local_endpoints


# Every data path gives the verdict kube-proxy's rules give: DROP for no local endpoints.
@pytest.mark.parametrize("no_local", [True, False], ids=["elsewhere", "nowhere"])
def test_both_paths_drop_for_no_local_endpoints_and_reject_for_none_at_all(
    datapath: Datapath, no_local: bool
) -> None:
    vip = ip_address("10.96.0.10")
    ports = {
        (vip, p, n): ServicePort(f"shop/web:{p}", vip, p, n, (), no_local_endpoints=no_local)
        for p, n in (("TCP", 80), ("UDP", 53))
    }
    datapath.apply(Snapshot(ports))
    for packet in (
        tcp_packet("10.244.1.2", 4000, "10.96.0.10", 80, 0x02),
        udp_packet("10.244.1.2", 4000, "10.96.0.10", 53, b"q"),
    ):
        verdict = datapath.process(packet)
        if no_local:
            assert (verdict.action, verdict.reason) == (Action.DROP, "no_local_endpoints")
        else:
            assert (verdict.action, verdict.reason) == (Action.REJECT, "no_endpoints")


# --- 2. Topology hints are decided from the Ready endpoints only


def test_hints_of_unready_endpoints_do_not_count() -> None:
    """TestCategorizeEndpoints "only unready endpoints in same zone (should not filter)"."""
    endpoints = [
        endpoint(3, ready=False, zones=("zone-a",)),
        endpoint(4, zones=("zone-b",)),
        endpoint(5, zones=("zone-c",)),
        endpoint(6, ready=False, zones=("zone-a",)),
    ]
    assert chosen(frontend(endpoints, zone="zone-a")) == [4, 5]


def test_an_unready_endpoint_without_hints_does_not_switch_hints_off() -> None:
    """ "unready endpoint": only Ready endpoints must carry hints."""
    endpoints = [
        endpoint(3, zones=("zone-a",)),
        endpoint(4, zones=("zone-b",)),
        endpoint(6, ready=False),
    ]
    assert chosen(frontend(endpoints, zone="zone-a")) == [3]


def test_the_terminating_fallback_ignores_hints() -> None:
    """CategorizeEndpoints: when no endpoint is Ready, every serving-and-terminating one is
    used, "we do NOT consider topology aware routing" there."""
    endpoints = [
        endpoint(1, ready=False, serving=True, terminating=True, zones=("zone-a",)),
        endpoint(2, ready=False, serving=True, terminating=True, zones=("zone-b",)),
    ]
    assert chosen(frontend(endpoints, zone="zone-a")) == [1, 2]


# --- 3. An absent serving condition is true


def test_a_terminating_endpoint_with_serving_unset_is_used_in_the_fallback() -> None:
    """newEndpointSliceInfo: Serving is `Conditions.Serving == nil || *Serving`."""
    endpoints = [endpoint(1, ready=False, terminating=True)]
    assert chosen(frontend(endpoints)) == [1]


def test_a_terminating_endpoint_that_is_not_serving_is_not_used() -> None:
    endpoints = [endpoint(1, ready=False, serving=False, terminating=True)]
    assert chosen(frontend(endpoints)) == []


# --- 4. Without a node name, no endpoint is local


@pytest.mark.parametrize("endpoint_node", [None, "node-a"], ids=["no nodeName", "nodeName"])
def test_without_a_node_name_no_endpoint_is_local(endpoint_node: str | None) -> None:
    """EndpointSliceCache.isLocal: `len(cache.hostname) > 0 && hostname == cache.hostname`,
    and an endpoint without nodeName is never local."""
    port = frontend([endpoint(1, node=endpoint_node)], "Local", node=None)
    assert port.backends == () and port.no_local_endpoints


def test_an_endpoint_without_a_node_name_is_not_local_to_a_named_node() -> None:
    port = frontend([endpoint(1), endpoint(2, node="node-a")], "Local", node="node-a")
    assert chosen(port) == [2]


# --- 5. A slice port with no port number, or no name, is skipped alone


@pytest.mark.parametrize(
    ("bad_port", "note"),
    [
        ("{name: metrics, protocol: TCP}", "ports[1].port: absent"),
        ("{name: metrics, port: 0, protocol: TCP}", "ports[1].port: 0"),
        ("{port: 9090, protocol: TCP}", "ports[1].name: absent"),
    ],
    ids=["no port", "port 0", "no name"],
)
def test_a_slice_port_kube_proxy_ignores_leaves_the_rest_of_the_slice(
    bad_port: str, note: str, tmp_path: Any
) -> None:
    """endpointInfoByServicePort: "Ignoring port with nil name", "Ignoring invalid endpoint
    port" (nil or 0), then `continue` with the next port."""
    ports = f"[{{name: http, port: 8080, protocol: TCP}}, {bad_port}]"
    manifest = SERVICE.format(policy="Cluster") + endpoint_slice([endpoint(1)], ports)
    path = tmp_path / "web.yaml"
    path.write_text(manifest)
    loaded = load_manifest_file(path, CIDRS)  # the file is not refused
    tracker = ChangeTracker(CIDRS)
    tracker.replace_all(loaded.services, loaded.endpoint_slices)
    changes = tracker.flush()
    (port,) = tracker.ports.values()
    assert chosen(port) == [1]
    assert len(changes.errors) == 1 and note in changes.errors[0], changes.errors
    assert "EndpointSlice shop/web-1" in tracker.errors()[0]


# --- 7. Node hints (trafficDistribution PreferSameNode)


def test_node_hints_keep_traffic_on_this_node_when_every_ready_endpoint_has_them() -> None:
    """topologyModeFromHints: every Ready endpoint has a node hint and one names this
    node, so PreferSameNode, ahead of zone hints."""
    endpoints = [
        endpoint(1, zones=("zone-a",), nodes=("node-a",)),
        endpoint(2, zones=("zone-a",), nodes=("node-b",)),
        endpoint(3, zones=("zone-b",), nodes=("node-c",)),
    ]
    assert chosen(frontend(endpoints, zone="zone-a")) == [1]
    assert chosen(frontend(endpoints, node="node-c", zone="zone-a")) == [3]


def test_node_hints_fall_back_to_zone_hints_when_one_endpoint_lacks_them() -> None:
    endpoints = [
        endpoint(1, zones=("zone-a",), nodes=("node-a",)),
        endpoint(2, zones=("zone-a",)),
        endpoint(3, zones=("zone-b",), nodes=("node-c",)),
    ]
    assert chosen(frontend(endpoints, zone="zone-a")) == [1, 2]


def test_node_hints_for_other_nodes_only_fall_back_to_zone_hints() -> None:
    endpoints = [
        endpoint(1, zones=("zone-a",), nodes=("node-b",)),
        endpoint(2, zones=("zone-b",), nodes=("node-c",)),
    ]
    assert chosen(frontend(endpoints, zone="zone-a")) == [1]
    assert chosen(frontend(endpoints, zone=None)) == [1, 2]


def test_node_hints_play_no_part_under_local_policy() -> None:
    endpoints = [endpoint(1, node="node-a", nodes=("node-b",)), endpoint(2, node="node-b")]
    assert chosen(frontend(endpoints, "Local")) == [1]
