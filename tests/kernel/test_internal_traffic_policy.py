"""internalTrafficPolicy Local, with real traffic on every data path, as kube-proxy
answers it: this node's endpoints only; endpoints only on other nodes mean the packet is
dropped (the client times out); no usable endpoint anywhere means it is refused."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import yaml

from nfqproxy.files import atomic_write
from nfqproxy_lab.proxy import read_status
from nfqproxy_lab.topology import DNS_TARGET, HTTP_TARGET, NODE_NAME, backend_ip
from nfqproxy_lab.traffic import http_get, udp_query
from tests.helpers.labs import RunningLab

pytestmark = pytest.mark.kernel
LOCAL_VIP = "10.96.0.40"


def local_service(node_names: list[str]) -> str:
    """A Local-policy service whose endpoints are backends 1.. on the given nodes."""
    ports = [
        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": HTTP_TARGET},
        {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": DNS_TARGET},
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "local-only", "namespace": "default"},
        "spec": {"clusterIP": LOCAL_VIP, "internalTrafficPolicy": "Local", "ports": ports},
    }
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "local-only-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "local-only"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [backend_ip(i + 1)], "nodeName": node}
            for i, node in enumerate(node_names)
        ],
        "ports": [
            {"name": p["name"], "protocol": p["protocol"], "port": p["targetPort"]} for p in ports
        ],
    }
    return yaml.safe_dump_all([service, endpoint_slice])


@pytest.fixture
def with_local_service(running_lab: RunningLab) -> Iterator[RunningLab]:
    path = running_lab.lab.manifests_dir / "local.yaml"
    try:
        yield running_lab
    finally:
        path.unlink(missing_ok=True)
        time.sleep(1.5)  # one sync: the lab is as it was for the module's other tests


def program(running: RunningLab, node_names: list[str]) -> None:
    written = time.time()
    atomic_write(running.lab.manifests_dir / "local.yaml", local_service(node_names))
    deadline = time.monotonic() + 10
    while (read_status(running.lab).get("last_sync") or 0) <= written:
        assert time.monotonic() < deadline, "the manifest was never synced"
        time.sleep(0.05)


def outcome(call: Callable[..., str], *args: object) -> str:
    """The answer, or the name of the error: a timeout is how a dropped packet looks."""
    try:
        return call(*args)
    except OSError as exc:
        return type(exc).__name__


def test_local_policy_serves_this_nodes_endpoint_only(with_local_service: RunningLab) -> None:
    running = with_local_service
    program(running, [NODE_NAME, "other-node"])
    answers = {running.client.call(outcome, http_get, LOCAL_VIP, 80, 2.0) for _ in range(12)}
    assert answers == {"be1"}
    assert running.client.call(outcome, udp_query, LOCAL_VIP, 53, 2.0) == "be1"


def test_local_policy_with_endpoints_only_on_other_nodes_drops_so_clients_time_out(
    with_local_service: RunningLab,
) -> None:
    running = with_local_service
    program(running, ["other-node", "third-node"])
    assert running.client.call(outcome, http_get, LOCAL_VIP, 80, 1.5) == "TimeoutError"
    assert running.client.call(outcome, udp_query, LOCAL_VIP, 53, 1.5) == "TimeoutError"
    counters = read_status(running.lab)["counters"]
    assert counters.get("drop_no_local_endpoints", 0) >= 2, counters


def test_local_policy_with_no_endpoints_at_all_still_refuses(
    with_local_service: RunningLab,
) -> None:
    running = with_local_service
    program(running, [])
    assert running.client.call(outcome, http_get, LOCAL_VIP, 80, 1.5) == "ConnectionRefusedError"
    assert running.client.call(outcome, udp_query, LOCAL_VIP, 53, 1.5) == "ConnectionRefusedError"
