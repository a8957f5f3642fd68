"""/healthz, /livez and /metrics of a running proxy, fetched inside its node namespace,
with the per service port counters on."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from nfqproxy_lab.topology import HTTP_PORT, WEB_VIP
from nfqproxy_lab.traffic import fetch_url as fetch
from nfqproxy_lab.traffic import http_split
from tests.helpers.datapaths import datapath_params
from tests.helpers.labs import RunningLab, lab_with_proxy

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module", params=datapath_params())
def running_lab(request: pytest.FixtureRequest) -> Iterator[RunningLab]:
    """conftest's, with --metrics-per-service-port."""
    with lab_with_proxy("--datapath", request.param, "--metrics-per-service-port") as running:
        yield running


def test_healthz_and_livez_answer_json_while_syncs_are_fresh(running_lab: RunningLab) -> None:
    for path in ("/healthz", "/livez"):
        status, body = running_lab.node.call(fetch, f"http://127.0.0.1:10256{path}")
        document = json.loads(body)
        assert status == 200 and document["healthy"] is True and document["lastUpdated"]


def test_metrics_count_syncs_verdicts_and_kernel_queue_drops(running_lab: RunningLab) -> None:
    running_lab.client.call(http_split, WEB_VIP, HTTP_PORT, 5)
    status, text = running_lab.node.call(fetch, "http://127.0.0.1:10249/metrics")
    assert status == 200
    lines = text.splitlines()
    count = next(
        x for x in lines if x.startswith("kubeproxy_sync_proxy_rules_duration_seconds_count")
    )
    assert float(count.split()[-1]) >= 1
    new_flows = next(
        x
        for x in lines
        if x.startswith('nfqproxy_packets_total{reason="new_flow",verdict="accept"}')
    )
    assert float(new_flows.split()[-1]) >= 5
    assert any(
        x.startswith('nfqproxy_kernel_queue_drops_total{reason="queue_full"}') for x in lines
    )
    assert any(x.startswith("nfqproxy_flow_capacity ") for x in lines)
    web = next(
        x
        for x in lines
        if x.startswith("nfqproxy_service_port_new_flows_total{")
        and x.split("}")[0].endswith('/web:http"')
    )
    assert float(web.split()[-1]) >= 5


def test_metrics_are_not_served_beyond_localhost(running_lab: RunningLab) -> None:
    with pytest.raises(OSError):
        running_lab.client.call(fetch, "http://10.244.1.1:10249/metrics")
