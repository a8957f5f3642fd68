"""The proxy following the in-process API server, with real traffic in a namespace lab."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from nfqproxy_lab.proxy import read_status, start_proxy, wait_ready
from nfqproxy_lab.served_api import ServedApi
from nfqproxy_lab.topology import HTTP_PORT, NODE_NAME, WEB_VIP, lab_endpoint_slices
from nfqproxy_lab.traffic import fetch_url, http_get, http_split
from tests.helpers.labs import RunningLab, lab_with_api_proxy

pytestmark = pytest.mark.kernel


@pytest.fixture
def api_lab() -> Iterator[tuple[RunningLab, ServedApi]]:
    with lab_with_api_proxy() as running_and_api:
        yield running_and_api


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def backends_seen(running: RunningLab, count: int = 30) -> set[str]:
    return set(running.client.call(http_split, WEB_VIP, HTTP_PORT, count, 1.0))


def test_traffic_follows_services_and_slices_listed_from_the_api(
    api_lab: tuple[RunningLab, ServedApi],
) -> None:
    running, api = api_lab
    assert backends_seen(running) == {"be1", "be2", "be3"}
    status = read_status(running.lab)
    assert status["api"]["services"]["synced"] and status["api"]["endpointslices"]["objects"] == 1
    assert any(
        "fieldSelector=spec.clusterIP" in r and "limit=500" in r for r in api.server.requests
    )
    assert any("watch=true" in r and "allowWatchBookmarks=true" in r for r in api.server.requests)


def test_an_endpoint_removed_through_a_watch_gets_no_new_connections(
    api_lab: tuple[RunningLab, ServedApi],
) -> None:
    running, api = api_lab
    changed = lab_endpoint_slices([1, 2])["items"][0]
    # RFC 3339 with fractions, as the EndpointSlice controller writes it: a whole-second
    # stamp could fall before the proxy started, and would then not count, as in kube-proxy.
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    changed["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": stamp}
    api.call(api.server.update("endpointslices", changed))
    assert eventually(lambda: backends_seen(running, 20) == {"be1", "be2"})
    _, metrics = running.node.call(fetch_url, "http://127.0.0.1:10249/metrics")
    count = next(
        x
        for x in metrics.splitlines()
        if x.startswith("kubeproxy_network_programming_duration_seconds_count")
    )
    assert float(count.split()[-1]) == 1.0


def test_compaction_during_a_watch_forces_a_relist_and_a_service_deleted_meanwhile_stops(
    api_lab: tuple[RunningLab, ServedApi],
) -> None:
    running, api = api_lab
    lists_before = read_status(running.lab)["api"]["services"]["lists"]

    async def delete_unseen() -> None:
        # One step with no await in between: the open watch ends without delivering the
        # deletion, and re-watching from the proxy's resourceVersion gets 410.
        await api.server.delete("services", "default", "web")
        await api.server.compact()

    api.call(delete_unseen())

    def refused() -> bool:
        try:
            running.client.call(http_get, WEB_VIP, HTTP_PORT, 1.0)
            return False
        except ConnectionRefusedError:
            return True
        except OSError:
            # A connection made just before the deletion took effect is reset at its
            # next packet (its backend left with the service), or may time out: ask again.
            return False

    assert eventually(refused, 8.0)
    assert read_status(running.lab)["api"]["services"]["lists"] > lists_before


def test_api_faults_keep_the_last_good_state_and_the_proxy_recovers(
    api_lab: tuple[RunningLab, ServedApi],
) -> None:
    running, api = api_lab
    api.server.faults.errors, api.server.faults.garbage = 3, 2
    api.call(
        api.server.restart_with_new_history()
    )  # every informer must list again, through faults
    for _ in range(3):
        assert backends_seen(running, 9) <= {"be1", "be2", "be3"}
        assert len(backends_seen(running, 9)) >= 2
    api.call(api.server.update("endpointslices", lab_endpoint_slices([2])["items"][0]))
    assert eventually(lambda: backends_seen(running, 10) == {"be2"}, 30.0)
    assert read_status(running.lab)["api"]["services"]["errors"] >= 1


def test_hostile_objects_are_skipped_and_the_rest_keep_working(
    api_lab: tuple[RunningLab, ServedApi],
) -> None:
    running, api = api_lab
    hostile: list[dict[str, Any]] = [
        {
            "metadata": {"name": "bad-ip", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.999", "ports": [{"port": 80}]},
        },
        {
            "metadata": {"name": "big-port", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.31", "ports": [{"port": 70000}]},
        },
        {"metadata": {"name": "no-spec", "namespace": "default"}},
        {
            "metadata": {"name": "extra", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.32", "ports": [{"port": 80}], "surprise": {"x": 1}},
            "zzz": 1,
        },
    ]
    for obj in hostile:
        api.call(api.server.create("services", obj))
    huge = lab_endpoint_slices([1])["items"][0]
    huge["metadata"]["name"] = "web-huge"
    huge["endpoints"] = [{"addresses": [f"10.245.{i // 250}.{i % 250 + 1}"]} for i in range(10_000)]
    api.call(api.server.create("endpointslices", huge))
    assert eventually(lambda: len(read_status(running.lab).get("object_errors", [])) >= 4)
    errors = " ".join(read_status(running.lab)["object_errors"])
    assert "web-huge" in errors and "limit of 1000" in errors, errors
    assert (
        "bad-ip" in errors
        and "big-port" in errors
        and "no-spec" in errors
        and "extra" not in errors
    )
    assert backends_seen(running) == {"be1", "be2", "be3"}


def test_topology_hints_keep_new_flows_in_the_nodes_zone(
    api_lab: tuple[RunningLab, ServedApi],
) -> None:
    running, api = api_lab
    api.server.nodes[NODE_NAME] = {
        "metadata": {"name": NODE_NAME, "labels": {"topology.kubernetes.io/zone": "zone-a"}}
    }
    hinted = lab_endpoint_slices([1, 2, 3])["items"][0]
    for index, endpoint in enumerate(hinted["endpoints"]):
        endpoint["hints"] = {"forZones": [{"name": "zone-a" if index == 0 else "zone-b"}]}
    api.call(api.server.update("endpointslices", hinted))
    assert running.proxy is not None
    running.proxy.terminate()
    running.proxy.wait(10)
    running.proxy = start_proxy(running.lab, api_server=api.url)
    wait_ready(running.lab, running.proxy)
    assert backends_seen(running, 20) == {"be1"}
