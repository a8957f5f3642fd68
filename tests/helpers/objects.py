"""Kubernetes objects as sources report them (parsed YAML or JSON), and reporting them."""

from __future__ import annotations

from typing import Any

from nfqproxy.tracker import ChangeTracker


def service(name: str, vip: str, port: int = 80, namespace: str = "shop") -> dict[str, Any]:
    """A ClusterIP Service with one TCP port named http."""
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": port}]},
    }


def endpoint_slice(
    name: str, service_name: str, *addresses: str, namespace: str = "shop"
) -> dict[str, Any]:
    """An IPv4 EndpointSlice of the service, port http on 8080, one endpoint per address."""
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [a]} for a in addresses],
    }


def report(tracker: ChangeTracker, *objects: dict[str, Any]) -> None:
    """Reports each object to the tracker as changed, as a watch would."""
    for obj in objects:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if obj["kind"] == "Service":
            tracker.service_changed(key, obj)
        else:
            tracker.slice_changed(key, obj)
