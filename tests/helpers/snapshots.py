"""Model snapshots to program a data path with, without manifests or a tracker."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

from nfqproxy.model import Backend, ServicePort, Snapshot

WEB_VIP, EMPTY_VIP = "10.96.0.10", "10.96.0.20"
NODE_IP, EXTERNAL_IP = "192.168.0.1", "192.0.2.9"
BACKENDS = ["10.244.11.2", "10.244.12.2", "10.244.13.2", "10.244.14.2"]


def snapshot(backends: frozenset[int], affinity: int = 0, external: bool = False) -> Snapshot:
    """web:http (TCP 80 -> 8080) and web:dns (UDP 53 -> 5353) on the BACKENDS chosen by
    index, with sessionAffinity seconds (0: none); empty:http with no endpoints, and
    empty:dns with endpoints on other nodes only (internalTrafficPolicy Local).
    external: web:http also on NodePort NODE_IP:30080 with externalTrafficPolicy Local
    (the first backend chosen is this node's) and on EXTERNAL_IP:80 with Cluster."""
    chosen = [BACKENDS[i] for i in sorted(backends)]
    vip, empty = ip_address(WEB_VIP), ip_address(EMPTY_VIP)
    ports = {
        (vip, protocol, port): ServicePort(
            f"d/web:{name}",
            vip,
            protocol,
            port,
            tuple(Backend(ip_address(b), target) for b in chosen),
            affinity,
        )
        for name, protocol, port, target in (("http", "TCP", 80, 8080), ("dns", "UDP", 53, 5353))
    }
    ports[(empty, "TCP", 80)] = ServicePort("d/empty:http", empty, "TCP", 80, ())
    # internalTrafficPolicy Local, endpoints only elsewhere: dropped, not rejected
    ports[(empty, "UDP", 53)] = ServicePort(
        "d/empty:dns", empty, "UDP", 53, (), no_local_endpoints=True
    )
    if external:
        web = ports[(vip, "TCP", 80)]
        node, external_ip = ip_address(NODE_IP), ip_address(EXTERNAL_IP)
        ports[(node, "TCP", 30080)] = replace(
            web,
            vip=node,
            port=30080,
            backends=web.backends[:1],
            draining=(),
            kind="NodePort",
            policy="external-local",
            cluster_backends=web.backends,
            no_local_endpoints=not web.backends[:1] and bool(web.backends),
        )
        ports[(external_ip, "TCP", 80)] = replace(
            web, vip=external_ip, kind="ExternalIP", policy="external-cluster"
        )
    return Snapshot(ports)
