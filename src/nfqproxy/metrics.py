"""Prometheus metrics: kube-proxy's names where the meaning matches, nfqproxy_* for the data path.

Data-path numbers are read when Prometheus scrapes (a custom collector), so the packet
path never touches a metrics object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

NFQUEUE_PROC = Path("/proc/net/netfilter/nfnetlink_queue")


def kernel_queue_drops(queue_num: int, proc: Path = NFQUEUE_PROC) -> dict[str, int]:
    """The kernel's drop counters for one queue, from this namespace's proc file.

    Columns: queue, peer portid, queued, copy mode, copy range, queue_dropped (the queue
    was full), user_dropped (netlink could not deliver), id sequence, 1.
    """
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 7 and fields[0] == str(queue_num):
            return {"queue_full": int(fields[5]), "netlink_undeliverable": int(fields[6])}
    return {}


class DatapathCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]], queue_num: int) -> None:
        self.status = status
        self.queue_num = queue_num

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        packets = CounterMetricFamily(
            "nfqproxy_packets", "Packets by verdict and reason", labels=["verdict", "reason"]
        )
        for name, value in status.get("counters", {}).items():
            verdict, _, reason = name.partition("_")
            if verdict in ("accept", "drop", "reject"):
                packets.add_metric([verdict, reason], value)
        yield packets
        table = status.get("connection_table", {})
        yield GaugeMetricFamily(
            "nfqproxy_flows", "Flows in the connection table", table.get("flows", 0)
        )
        yield GaugeMetricFamily(
            "nfqproxy_flow_capacity", "Connection table capacity", table.get("capacity", 0)
        )
        yield CounterMetricFamily(
            "nfqproxy_flows_evicted", "Flows evicted from a full table", table.get("evicted", 0)
        )
        yield CounterMetricFamily(
            "nfqproxy_flows_expired", "Flows expired", table.get("expired", 0)
        )
        yield GaugeMetricFamily(
            "nfqproxy_service_ports", "Service ports programmed", status.get("service_ports", 0)
        )
        queue = CounterMetricFamily(
            "nfqproxy_queue_events", "Queue loop events (fast path)", labels=["event"]
        )
        for event, value in status.get("queue", {}).items():
            if event != "last_refusal_errno":
                queue.add_metric([event], value)
        yield queue
        drops = CounterMetricFamily(
            "nfqproxy_kernel_queue_drops",
            "Packets the kernel dropped at our queue",
            labels=["reason"],
        )
        for reason, value in kernel_queue_drops(self.queue_num).items():
            drops.add_metric([reason], value)
        yield drops


class ProxyMetrics:
    """The proxy's registry; one per proxy, so that tests can run several."""

    def __init__(self, status: Callable[[], dict[str, Any]], queue_num: int) -> None:
        self.registry = CollectorRegistry()
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "How long programming the data plane took",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.last_sync = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "When the data plane was last programmed successfully",
            registry=self.registry,
        )
        self.last_queued = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "When a change last asked for a sync",
            registry=self.registry,
        )
        self.network_programming = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "From an EndpointSlice change (its last-change-trigger-time) to the data plane",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.hook_restores = Counter(
            "nfqproxy_hook_restores",
            "Times the hook rules were found missing (flushed by someone else) and restored",
            registry=self.registry,
        )
        self.registry.register(DatapathCollector(status, queue_num))
