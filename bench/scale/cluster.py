"""The cluster a scale run programs: the same N services as Kubernetes objects, for
nfqproxy through the API server, and as kube-proxy's services, for its rule layouts."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from bench.scale.settings import (
    CHANGE_PORT,
    EMPTY_VIP,
    ENDPOINTS,
    IPERF_PORT,
    IPERF_VIP,
    NAMESPACE,
    NODEPORT_BASE,
    NODEPORT_MAX,
    SERVE_PORT,
    SERVICE_PORT,
)
from nfqproxy_lab.kube_proxy_rules import KubeService
from nfqproxy_lab.topology import backend_ip


def service_vip(index: int) -> str:
    return str(IPv4Address(int(IPv4Address("10.100.0.0")) + index + 1))


def unused_endpoint(index: int, endpoint: int) -> str:
    """Endpoints of the services no traffic is sent to: addresses nothing answers."""
    return str(IPv4Address(int(IPv4Address("10.128.0.0")) + index * 4 + endpoint + 1))


@dataclass
class Cluster:
    """N services; the first, the middle and the last in iptables order have the lab's
    real backends, and the last one's third endpoint (a slice of its own, as a different
    port needs) is the one that changes."""

    size: int
    change: int | None = None  # the change applied last: endpoint 3 on port_base + change
    # Each series of changes gets ports of its own. A connection reset by the server keeps
    # its conntrack entry, NAT binding included, and a client port reused later follows
    # it: ports shared between series would be reached before their change.
    port_base: int = CHANGE_PORT

    @property
    def last(self) -> int:
        return self.size - 1

    @property
    def middle(self) -> int:
        return self.size // 2

    def endpoints(self, index: int) -> list[tuple[str, int]]:
        if index in (0, self.middle, self.last):
            third = SERVE_PORT if self.change is None or index != self.last else self.port()
            return [
                (backend_ip(1), SERVE_PORT),
                (backend_ip(2), SERVE_PORT),
                (backend_ip(3), third),
            ]
        return [(unused_endpoint(index, e), SERVE_PORT) for e in range(ENDPOINTS)]

    def port(self) -> int:
        return self.port_base + (self.change or 0)

    @property
    def has_node_ports(self) -> bool:
        return self.size <= NODEPORT_MAX

    def node_port(self, index: int) -> int:
        """svc-index's NodePort; 0 when the run's services have none."""
        return NODEPORT_BASE + index if self.has_node_ports else 0

    def kube_services(self) -> list[KubeService]:
        """In iptables order: the iperf3 and empty services first, then svc-0 .. svc-N-1."""
        extras = [
            KubeService(
                f"{NAMESPACE}/iperf:{p}", IPERF_VIP, IPERF_PORT, p, ((backend_ip(1), IPERF_PORT),)
            )
            for p in ("tcp", "udp")
        ]
        extras.append(KubeService(f"{NAMESPACE}/empty:http", EMPTY_VIP, SERVICE_PORT, "tcp", ()))
        return extras + [
            KubeService(
                f"{NAMESPACE}/svc-{i}:http",
                service_vip(i),
                SERVICE_PORT,
                "tcp",
                tuple(self.endpoints(i)),
                self.node_port(i),
            )
            for i in range(self.size)
        ]

    def service_objects(self) -> list[dict[str, Any]]:
        def service(
            name: str, vip: str, ports: list[dict[str, Any]], node_port: int = 0
        ) -> dict[str, Any]:
            spec = {"clusterIP": vip, "clusterIPs": [vip], "ports": ports}
            if node_port:
                spec["type"] = "NodePort"
                spec["ports"] = [{**ports[0], "nodePort": node_port}]
            return {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": spec,
            }

        http = [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT}]
        iperf = [{"name": p.lower(), "protocol": p, "port": IPERF_PORT} for p in ("TCP", "UDP")]
        return [
            service("iperf", IPERF_VIP, iperf),
            service("empty", EMPTY_VIP, http),
            *(
                service(f"svc-{i}", service_vip(i), http, self.node_port(i))
                for i in range(self.size)
            ),
        ]

    def slice_objects(self) -> list[dict[str, Any]]:
        slices = [
            slice_object(
                "iperf",
                "iperf-a",
                [backend_ip(1)],
                [("tcp", "TCP", IPERF_PORT), ("udp", "UDP", IPERF_PORT)],
            )
        ]
        for i in range(self.size):
            addresses = [ip for ip, _ in self.endpoints(i)]
            if i == self.last:
                slices.append(
                    slice_object(
                        f"svc-{i}", f"svc-{i}-a", addresses[:2], [("http", "TCP", SERVE_PORT)]
                    )
                )
                slices.append(self.changing_slice())
            else:
                slices.append(
                    slice_object(f"svc-{i}", f"svc-{i}-a", addresses, [("http", "TCP", SERVE_PORT)])
                )
        return slices

    def changing_slice(self) -> dict[str, Any]:
        ip, port = self.endpoints(self.last)[2]
        return slice_object(f"svc-{self.last}", f"svc-{self.last}-b", [ip], [("http", "TCP", port)])


def slice_object(
    service: str, name: str, addresses: list[str], ports: list[tuple[str, str, int]]
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
        "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in ports],
    }
