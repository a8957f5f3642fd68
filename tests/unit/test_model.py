"""kube-proxy's ClusterIP rules: Kubernetes YAML in, the frontend table out."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Any

import pytest
import yaml

from nfqproxy.fields import ObjectError
from nfqproxy.model import (
    IPNetwork,
    object_ref,
    parse_endpoint_slice,
    parse_service,
)
from nfqproxy.tracker import build_snapshot

CIDRS = [IPv4Network("10.96.0.0/12")]


def table(manifest: str, node: str | None = "node-a") -> dict[str, list[str]]:
    """'VIP:port/PROTO name' -> ['ip:port', ...] for every frontend the manifest gives."""
    docs: list[dict[str, Any]] = list(yaml.safe_load_all(manifest))
    services = [parse_service(d, CIDRS) for d in docs if d["kind"] == "Service"]
    slices = [parse_endpoint_slice(d) for d in docs if d["kind"] == "EndpointSlice"]
    snapshot = build_snapshot(services, slices, node)
    return {
        f"{p.vip}:{p.port}/{p.protocol} {p.name}": [b.name for b in p.backends]
        for p in sorted(snapshot.ports.values(), key=lambda p: (str(p.vip), p.port))
    }


SERVICE = """
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop{labels}}}
spec:
  clusterIP: 10.96.0.10
  {extra}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}
  - {{name: dns, port: 53, protocol: UDP}}
"""


def service(extra: str = "", labels: str = "") -> str:
    return SERVICE.format(extra=extra, labels=labels)


def endpoint_slice(name: str, endpoints: str, ports: str | None = None) -> str:
    ports = (
        ports or "[{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]"
    )
    return f"""
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: {ports}
endpoints: {endpoints}
"""


def test_endpoints_of_all_slices_are_merged_and_ports_matched_by_name() -> None:
    manifest = (
        service()
        + endpoint_slice("web-1", "[{addresses: [10.1.0.1]}, {addresses: [10.1.0.2]}]")
        + endpoint_slice("web-2", "[{addresses: [10.1.0.3]}]", "[{name: http, port: 9090}]")
    )
    assert table(manifest) == {
        "10.96.0.10:53/UDP shop/web:dns": ["10.1.0.1:5353", "10.1.0.2:5353"],
        "10.96.0.10:80/TCP shop/web:http": ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:9090"],
    }


def test_ready_endpoints_win_else_serving_terminating_ones_are_used() -> None:
    mixed = """[
      {addresses: [10.1.0.1], conditions: {ready: true}},
      {addresses: [10.1.0.2], conditions: {ready: false, serving: true, terminating: true}},
      {addresses: [10.1.0.3], conditions: {ready: false, serving: false}}]"""
    assert table(service() + endpoint_slice("a", mixed))["10.96.0.10:80/TCP shop/web:http"] == [
        "10.1.0.1:8080"
    ]
    draining = """[
      {addresses: [10.1.0.2], conditions: {ready: false, serving: true, terminating: true}},
      {addresses: [10.1.0.3], conditions: {ready: false, serving: false, terminating: true}},
      {addresses: [10.1.0.4], conditions: {ready: false, serving: true, terminating: false}}]"""
    assert table(service() + endpoint_slice("a", draining))["10.96.0.10:80/TCP shop/web:http"] == [
        "10.1.0.2:8080"
    ]


def test_a_missing_ready_condition_means_ready() -> None:
    assert table(service() + endpoint_slice("a", "[{addresses: [10.1.0.9]}]"))[
        "10.96.0.10:80/TCP shop/web:http"
    ] == ["10.1.0.9:8080"]


def test_internal_traffic_policy_local_keeps_only_this_nodes_endpoints() -> None:
    endpoints = (
        "[{addresses: [10.1.0.1], nodeName: node-a}, {addresses: [10.1.0.2], nodeName: node-b}]"
    )
    manifest = service("internalTrafficPolicy: Local") + endpoint_slice("a", endpoints)
    assert table(manifest, "node-a")["10.96.0.10:80/TCP shop/web:http"] == ["10.1.0.1:8080"]
    assert table(manifest, "node-c")["10.96.0.10:80/TCP shop/web:http"] == []


@pytest.mark.parametrize(
    "variant",
    [
        service(labels=", labels: {service.kubernetes.io/service-proxy-name: other}"),
        service().replace("clusterIP: 10.96.0.10", "clusterIP: None"),
        service("type: ExternalName\n  externalName: example.org").replace(
            "clusterIP: 10.96.0.10", "clusterIP: ''"
        ),
    ],
    ids=["service-proxy-name label", "headless", "ExternalName"],
)
def test_services_kube_proxy_skips_get_no_frontend(variant: str) -> None:
    assert table(variant + endpoint_slice("a", "[{addresses: [10.1.0.1]}]")) == {}


def test_a_service_without_slices_has_frontends_with_no_backends() -> None:
    assert table(service()) == {
        "10.96.0.10:53/UDP shop/web:dns": [],
        "10.96.0.10:80/TCP shop/web:http": [],
    }


def test_the_ipv6_half_of_a_dual_stack_service_is_left_out_without_an_ipv6_range() -> None:
    doc = yaml.safe_load(service())
    doc["spec"]["clusterIPs"] = ["10.96.0.10", "fd00::10"]
    assert [str(ip) for ip in parse_service(doc, CIDRS).cluster_ips] == ["10.96.0.10"]
    both = parse_service(doc, [*CIDRS, IPv6Network("fd00::/108")])
    assert [str(ip) for ip in both.cluster_ips] == ["10.96.0.10", "fd00::10"]


BAD_FIELDS = [
    ("spec.ports[0].port", lambda d: d["spec"]["ports"][0].update(port=70000), "out of range"),
    ("spec.ports[1].protocol", lambda d: d["spec"]["ports"][1].update(protocol="ICMP"), "TCP, UDP"),
    ("spec.clusterIP", lambda d: d["spec"].update(clusterIP="10.96.0.1.2"), "not a valid IP"),
    ("spec.clusterIP", lambda d: d["spec"].update(clusterIP="172.16.0.1"), "outside the service"),
    (
        "spec.externalIPs[0]",
        lambda d: d["spec"].update(externalIPs=["::ffff:192.0.2.9"]),
        "IPv4-mapped",
    ),
    ("metadata.name", lambda d: d["metadata"].update(name="a$(reboot)"), "not a valid name"),
    ("metadata.name", lambda d: d["metadata"].update(name="-j ACCEPT"), "not a valid name"),
    ("metadata.namespace", lambda d: d["metadata"].update(namespace="x\ny"), "not a valid name"),
    ("spec.ports[0].name", lambda d: d["spec"]["ports"][0].update(name="http;"), "not a valid"),
    ("spec", lambda d: d.update(spec="nope"), "must be a mapping"),
    ("spec.ports", lambda d: d["spec"].update(ports={"a": 1}), "must be a list"),
    ("spec.ports[0].port", lambda d: d["spec"]["ports"][0].update(port="80"), "integer port"),
    ("spec.ports[0].port", lambda d: d["spec"]["ports"][0].update(port=True), "integer port"),
    (
        "spec.ports[1].port",
        lambda d: d["spec"]["ports"][1].update(port=80, protocol="TCP"),
        "twice",
    ),
]


@pytest.mark.parametrize(
    ("field", "mutate", "message"), BAD_FIELDS, ids=[f"{f}-{m}" for f, _, m in BAD_FIELDS]
)
def test_a_bad_service_field_is_named_in_the_error(field: str, mutate: Any, message: str) -> None:
    doc = yaml.safe_load(service())
    mutate(doc)
    with pytest.raises(ObjectError) as error:
        parse_service(doc, CIDRS)
    assert error.value.field_path == field and message in error.value.message


@pytest.mark.parametrize(
    ("field", "endpoints"),
    [
        ("endpoints[0].addresses[0]", "[{addresses: [10.1.0.300]}]"),
        ("endpoints[0].addresses[0]", "[{addresses: ['fd00::1']}]"),
        ("endpoints[0].addresses", "[{addresses: []}]"),
        ("endpoints[0].conditions.ready", "[{addresses: [10.1.0.1], conditions: {ready: 'yes'}}]"),
        ("endpoints[1]", "[{addresses: [10.1.0.1]}, 7]"),
    ],
)
def test_a_bad_endpoint_slice_field_is_named_in_the_error(field: str, endpoints: str) -> None:
    doc = yaml.safe_load(endpoint_slice("a", endpoints).lstrip("-\n"))
    with pytest.raises(ObjectError) as error:
        parse_endpoint_slice(doc)
    assert error.value.field_path == field


def test_object_references_escape_hostile_names() -> None:
    ref = object_ref(
        {"kind": "Service", "metadata": {"name": "a\nFAKE LOG LINE\x1b[31m", "namespace": "n"}}
    )
    assert "\n" not in ref and "\x1b" not in ref and ref.startswith("Service n/a\\n")


def test_a_vip_port_claimed_by_two_services_is_served_by_the_first_and_reported() -> None:
    second = service().replace("name: web, namespace: shop", "name: web2, namespace: shop")
    docs = [yaml.safe_load(service()), yaml.safe_load(second)]
    snapshot = build_snapshot([parse_service(d, CIDRS) for d in docs], [])
    assert {p.name for p in snapshot.ports.values()} == {"shop/web:http", "shop/web:dns"}
    assert len(snapshot.conflicts) == 2 and "already served by shop/web" in snapshot.conflicts[0]


def test_a_slice_over_the_apis_1000_endpoint_limit_is_refused() -> None:
    many = (
        "["
        + ", ".join(f"{{addresses: [10.2.{i // 250}.{i % 250 + 1}]}}" for i in range(1001))
        + "]"
    )
    doc = yaml.safe_load(endpoint_slice("big", many).lstrip("-\n"))
    with pytest.raises(ObjectError, match="limit of 1000"):
        parse_endpoint_slice(doc)


HINTED = """[
  {addresses: [10.1.0.1], zone: a, hints: {forZones: [{name: a}]}},
  {addresses: [10.1.0.2], zone: b, hints: {forZones: [{name: b}]}},
  {addresses: [10.1.0.3], zone: b, hints: {forZones: [{name: b}, {name: c}]}}]"""


def table_in_zone(manifest: str, zone: str | None) -> list[str]:
    docs: list[dict[str, Any]] = list(yaml.safe_load_all(manifest))
    services = [parse_service(d, CIDRS) for d in docs if d["kind"] == "Service"]
    slices = [parse_endpoint_slice(d) for d in docs if d["kind"] == "EndpointSlice"]
    snapshot = build_snapshot(services, slices, "node-a", zone)
    port = next(p for p in snapshot.ports.values() if p.port == 80)
    return [b.name for b in port.backends]


def test_topology_hints_keep_traffic_in_the_nodes_zone_when_every_endpoint_has_them() -> None:
    manifest = service() + endpoint_slice("a", HINTED)
    assert table_in_zone(manifest, "a") == ["10.1.0.1:8080"]
    assert table_in_zone(manifest, "c") == ["10.1.0.3:8080"]
    assert table_in_zone(manifest, None) == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]


def test_topology_hints_are_ignored_if_one_endpoint_lacks_them_or_none_names_the_zone() -> None:
    partial = HINTED.replace(", hints: {forZones: [{name: b}]}", "")
    assert len(table_in_zone(service() + endpoint_slice("a", partial), "a")) == 3
    assert len(table_in_zone(service() + endpoint_slice("a", HINTED), "z")) == 3


def test_a_malformed_hint_is_named_in_the_error() -> None:
    bad = "[{addresses: [10.1.0.1], hints: {forZones: [{nom: a}]}}]"
    doc = yaml.safe_load(endpoint_slice("a", bad).lstrip("-\n"))
    with pytest.raises(ObjectError) as error:
        parse_endpoint_slice(doc)
    assert error.value.field_path == "endpoints[0].hints.forZones[0].name"


@pytest.mark.parametrize(
    ("extra", "seconds"),
    [
        ("", 0),
        ("sessionAffinity: None", 0),
        ("sessionAffinity: ClientIP", 10800),
        (
            "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}",
            60,
        ),
    ],
)
def test_session_affinity_reaches_every_port_of_the_service(extra: str, seconds: int) -> None:
    snapshot = build_snapshot([parse_service(yaml.safe_load(service(extra)), CIDRS)], [])
    assert {p.affinity_seconds for p in snapshot.ports.values()} == {seconds}


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"sessionAffinity": "Sticky"}, "spec.sessionAffinity", "not None or ClientIP"),
        (
            {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
            },
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "out of range 1-86400",
        ),
        (
            {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}},
            },
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "out of range",
        ),
        (
            {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": "1h"}},
            },
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "must be an integer",
        ),
        (
            {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": []}},
            "spec.sessionAffinityConfig.clientIP",
            "must be a mapping",
        ),
    ],
)
def test_bad_session_affinity_is_named(spec: dict[str, Any], path: str, message: str) -> None:
    doc = yaml.safe_load(service())
    doc["spec"].update(spec)
    with pytest.raises(ObjectError) as error:
        parse_service(doc, CIDRS)
    assert error.value.field_path == path and message in error.value.message


DUAL: list[IPNetwork] = [*CIDRS, IPv6Network("fd00::/108")]


@pytest.mark.parametrize(
    ("spec", "served"),
    [
        ({"ipFamilyPolicy": "SingleStack", "clusterIPs": ["fd00::10"]}, ["fd00::10"]),
        ({"ipFamilyPolicy": "PreferDualStack", "clusterIPs": ["10.96.0.10"]}, ["10.96.0.10"]),
        (
            {
                "ipFamilyPolicy": "PreferDualStack",
                "ipFamilies": ["IPv6", "IPv4"],
                "clusterIPs": ["fd00::10", "10.96.0.10"],
            },
            ["fd00::10", "10.96.0.10"],
        ),
        (
            {"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.0.10", "fd00::10"]},
            ["10.96.0.10", "fd00::10"],
        ),
        ({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["None"]}, []),  # headless
    ],
    ids=["single-v6", "prefer-one", "prefer-v6-first", "require-both", "require-headless"],
)
def test_each_cluster_ip_of_a_served_family_is_a_frontend(
    spec: dict[str, Any], served: list[str]
) -> None:
    doc = yaml.safe_load(service())
    del doc["spec"]["clusterIP"]
    doc["spec"].update(spec)
    assert [str(ip) for ip in parse_service(doc, DUAL).cluster_ips] == served


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"ipFamilyPolicy": "DualStack"}, "spec.ipFamilyPolicy", "is not one of"),
        ({"ipFamilies": ["IPv4", "IPv4"]}, "spec.ipFamilies[1]", "listed twice"),
        ({"ipFamilies": ["IPv5"]}, "spec.ipFamilies[0]", "is not IPv4 or IPv6"),
        ({"ipFamilies": ["IPv6"]}, "spec.clusterIPs[0]", "is not IPv6"),
        ({"clusterIPs": ["10.96.0.10", "10.96.0.11"]}, "spec.clusterIPs", "one of each"),
        (
            {"clusterIPs": ["10.96.0.10", "fd00::10", "fd00::11"]},
            "spec.clusterIPs",
            "at most 2",
        ),
        (
            {"ipFamilyPolicy": "SingleStack", "clusterIPs": ["10.96.0.10", "fd00::10"]},
            "spec.ipFamilyPolicy",
            "SingleStack allows one",
        ),
        (
            {"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.0.10"]},
            "spec.clusterIPs",
            "RequireDualStack needs an IPv4 and an IPv6",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_dual_stack_fields_that_disagree_are_named(
    spec: dict[str, Any], field: str, message: str
) -> None:
    doc = yaml.safe_load(service())
    del doc["spec"]["clusterIP"]
    doc["spec"].setdefault("clusterIPs", ["10.96.0.10"])
    doc["spec"].update(spec)
    with pytest.raises(ObjectError) as error:
        parse_service(doc, DUAL)
    assert error.value.field_path == field and message in error.value.message


def dual_stack_table(slices: str) -> dict[str, list[str]]:
    doc = yaml.safe_load(service())
    del doc["spec"]["clusterIP"]
    doc["spec"]["clusterIPs"] = ["10.96.0.10", "fd00::10"]
    parsed = [parse_endpoint_slice(d) for d in yaml.safe_load_all(slices)]
    snapshot = build_snapshot([parse_service(doc, DUAL)], parsed, "node-a")
    return {
        f"{p.vip}:{p.port}/{p.protocol}": [b.name for b in p.backends]
        for p in snapshot.ports.values()
    }


def test_each_family_is_served_from_its_own_slices_and_rejects_without_them() -> None:
    """kube-proxy's per-family proxiers: an IPv6 ClusterIP gets the IPv6 slice's endpoints
    only, and with none (IPv4 endpoints only) it has no backends: rejected, not sent to
    the other family."""
    v4 = endpoint_slice("web-v4", "[{addresses: [10.244.1.5]}]")
    v6 = endpoint_slice("web-v6", "[{addresses: ['fd00:244::5']}]").replace(
        "addressType: IPv4", "addressType: IPv6"
    )
    both = dual_stack_table(v4 + v6)
    assert both["10.96.0.10:80/TCP"] == ["10.244.1.5:8080"]
    assert both["fd00::10:80/TCP"] == ["[fd00:244::5]:8080"]
    only_v4 = dual_stack_table(v4)
    assert only_v4["10.96.0.10:80/TCP"] == ["10.244.1.5:8080"]
    assert only_v4["fd00::10:80/TCP"] == [] and only_v4["fd00::10:53/UDP"] == []


def test_a_slice_of_the_wrong_family_is_ignored_by_an_ipv4_only_proxy() -> None:
    v6 = endpoint_slice("web-v6", "[{addresses: ['fd00:244::5']}]").replace(
        "addressType: IPv4", "addressType: IPv6"
    )
    assert table(service() + v6) == {
        "10.96.0.10:53/UDP shop/web:dns": [],
        "10.96.0.10:80/TCP shop/web:http": [],
    }


def test_a_family_without_a_cluster_ip_is_not_served_even_on_external_addresses() -> None:
    """kube-proxy's per-family proxiers skip a service that has no ClusterIP of their
    family: an IPv6 external IP of an IPv4 single-stack service gets no frontend."""
    doc = yaml.safe_load(service())
    doc["spec"]["externalIPs"] = ["192.0.2.9", "2001:db8::9"]
    v6 = endpoint_slice("web-v6", "[{addresses: ['fd00:244::5']}]").replace(
        "addressType: IPv4", "addressType: IPv6"
    )
    parsed = [parse_endpoint_slice(d) for d in yaml.safe_load_all(v6)]
    snapshot = build_snapshot([parse_service(doc, DUAL)], parsed, "node-a")
    assert {str(p.vip) for p in snapshot.ports.values()} == {"10.96.0.10", "192.0.2.9"}
    doc["spec"]["clusterIPs"] = ["10.96.0.10", "fd00::10"]
    snapshot = build_snapshot([parse_service(doc, DUAL)], parsed, "node-a")
    assert "2001:db8::9" in {str(p.vip) for p in snapshot.ports.values()}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("externalIPs", ["2001:db8::5%x -exist\ndestroy nfqproxy-frontends-v6"]),
        ("loadBalancerSourceRanges", ["2001:db8::%x\nflush nfqproxy-fw-v6/32"]),
    ],
)
def test_an_ipv6_zone_is_refused_it_would_carry_text_into_the_sets(
    field: str, value: list[str]
) -> None:
    """ipaddress takes any text after % as a zone and keeps it in str(): such an address
    would write lines of its own into ipset's input. The API server refuses zones."""
    doc = yaml.safe_load(service())
    doc["spec"].update({"type": "LoadBalancer", field: value})
    with pytest.raises(ObjectError) as error:
        parse_service(doc, DUAL)
    assert error.value.field_path == f"spec.{field}[0]"


def test_source_ranges_go_to_the_ingress_ips_of_their_own_family() -> None:
    """As kube-proxy's per-family proxiers filter them: an ingress IP whose family has no
    range is not firewalled."""
    from nfqproxy.selection import service_ports

    doc = yaml.safe_load(service())
    doc["spec"].update(
        type="LoadBalancer",
        clusterIPs=["10.96.0.10", "fd00::10"],
        loadBalancerSourceRanges=["198.51.100.0/24"],
    )
    doc["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}, {"ip": "2001:db8::5"}]}}
    ports = service_ports(parse_service(doc, DUAL), [], "node-a", None)
    ranges = {str(p.vip): [str(r) for r in p.source_ranges] for p in ports if p.port == 80}
    assert ranges["203.0.113.5"] == ["198.51.100.0/24"]
    assert ranges["2001:db8::5"] == []
