"""deploy/grafana-dashboard.json parses as a Grafana dashboard, and every metric it queries
is one the proxy exports; the per service port metrics it shows are behind their flag."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from nfqproxy.datapath.marks import SOURCE_POD
from nfqproxy.metrics import ProxyMetrics
from nfqproxy_lab.packets import tcp_packet
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import new_datapath
from tests.helpers.snapshots import EMPTY_VIP, WEB_VIP, snapshot

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
METRIC = re.compile(r"\b(?:nfqproxy|kubeproxy)_[a-z0-9_]+")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queried_metrics() -> set[str]:
    return {
        name
        for panel in dashboard()["panels"]
        for target in panel["targets"]
        for name in METRIC.findall(target["expr"])
    }


def exported_metrics(metrics: ProxyMetrics) -> set[str]:
    """Every series name the registry can write, whether or not it has samples now."""
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def proxy_metrics(per_service_port: bool) -> ProxyMetrics:
    """The metrics of a reference data path that served a new flow and refused another."""
    datapath = new_datapath("reference", clock=FakeClock(1000.0))
    datapath.apply(snapshot(frozenset({0, 1})))
    datapath.process(tcp_packet("10.244.1.2", 40000, WEB_VIP, 80), SOURCE_POD)
    datapath.process(tcp_packet("10.244.1.2", 40001, EMPTY_VIP, 80), SOURCE_POD)
    ports = datapath.service_port_counts if per_service_port else None
    return ProxyMetrics(datapath.status, 100, ports=ports)


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "nfqproxy" and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    queried = queried_metrics()
    assert len(queried) >= 12
    missing = queried - exported_metrics(proxy_metrics(per_service_port=True))
    assert not missing, f"the dashboard queries metrics nfqproxy does not export: {missing}"


def test_the_check_catches_a_metric_that_does_not_exist() -> None:
    assert "nfqproxy_flows_teleported_total" not in exported_metrics(proxy_metrics(True))


@pytest.mark.parametrize("per_service_port", [False, True])
def test_per_service_port_counters_are_exported_only_when_asked(per_service_port: bool) -> None:
    text = generate_latest(proxy_metrics(per_service_port).registry).decode()
    new = 'nfqproxy_service_port_new_flows_total{service_port="d/web:http"} 1.0'
    refused = (
        'nfqproxy_service_port_refused_flows_total{reason="no_endpoints",'
        'service_port="d/empty:http"} 1.0'
    )
    assert (new in text, refused in text) == (per_service_port, per_service_port), text
