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

from nfqproxy.datapath.decisions import REFUSALS
from nfqproxy.datapath.workers import KERNEL_QUEUE_STATS, kernel_queue_stats

NFQUEUE_PROC = KERNEL_QUEUE_STATS


def kernel_queue_drops(queues: int | range, proc: Path = NFQUEUE_PROC) -> dict[str, int]:
    """The kernel's drop counters for our queues (summed), from this namespace's proc file:
    the queue was full, or netlink could not deliver to our socket."""
    ours = range(queues, queues + 1) if isinstance(queues, int) else queues
    stats = kernel_queue_stats(set(ours), proc)
    if not stats:
        return {}
    return {
        "queue_full": stats["kernel_queue_dropped"],
        "netlink_undeliverable": stats["kernel_user_dropped"],
    }


# The data path's new and refused flows by service port (Datapath.service_port_counts).
PortCounts = Callable[[], dict[str, dict[str, int]]]


class DatapathCollector(Collector):
    def __init__(
        self, status: Callable[[], dict[str, Any]], queues: range, ports: PortCounts | None
    ) -> None:
        self.status = status
        self.queues = queues
        self.ports = ports  # None: no series per service port

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
        exposure = status.get("exposure", {})
        external = GaugeMetricFamily(
            "nfqproxy_external_frontends",
            "External frontends programmed (address:port/protocol), by kind",
            labels=["kind"],
        )
        for kind in ("NodePort", "ExternalIP", "LoadBalancer"):
            external.add_metric([kind], exposure.get("external_frontends", {}).get(kind, 0))
        yield external
        health = GaugeMetricFamily(
            "nfqproxy_health_check_local_endpoints",
            "Local Ready endpoints each healthCheckNodePort reports",
            labels=["address", "service"],
        )
        for address, row in exposure.get("health_checks", {}).items():
            if isinstance(row, dict):
                health.add_metric([address, row["service"]], row["localEndpoints"])
        yield health
        queue = CounterMetricFamily(
            "nfqproxy_queue_events", "Queue loop events (compiled paths)", labels=["event"]
        )
        for event, value in status.get("queue", {}).items():
            # A value, a gauge, and the kernel's counters (below): not loop events.
            if event not in ("last_refusal_errno", "queues") and not event.startswith("kernel_"):
                queue.add_metric([event], value)
        yield queue
        decided = CounterMetricFamily(
            "nfqproxy_flows_decided",
            "New flows sent to each backend of each service port (compiled paths; status "
            "detail limit applies)",
            labels=["service_port", "backend"],
        )
        for row, value in status.get("decided_by_backend", {}).items():
            if " -> " in row and isinstance(value, int):
                service_port, backend = row.split(" -> ", 1)
                decided.add_metric([service_port, backend], value)
        yield decided
        drops = CounterMetricFamily(
            "nfqproxy_kernel_queue_drops",
            "Packets the kernel dropped at our queue",
            labels=["reason"],
        )
        for reason, value in kernel_queue_drops(self.queues).items():
            drops.add_metric([reason], value)
        yield drops
        if self.ports is not None:
            yield from service_port_metrics(self.ports())


def service_port_metrics(counts: dict[str, dict[str, int]]) -> Iterator[Metric]:
    new = CounterMetricFamily(
        "nfqproxy_service_port_new_flows",
        "New flows each service port sent to a backend, while it is programmed",
        labels=["service_port"],
    )
    refused = CounterMetricFamily(
        "nfqproxy_service_port_refused_flows",
        "New flows each service port refused (rejected, or dropped for "
        "internalTrafficPolicy Local), and TCP packets reset because their flow is gone "
        "(backend_removed: its backend left; on the offload path also a conntrack entry "
        "that expired), by reason",
        labels=["service_port", "reason"],
    )
    for name, by_reason in counts.items():
        new.add_metric([name], by_reason.get("new_flow", 0))
        for reason in REFUSALS:
            if by_reason.get(reason):
                refused.add_metric([name, reason], by_reason[reason])
    yield new
    yield refused


class ProxyMetrics:
    """The proxy's registry; one per proxy, so that tests can run several."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        queue_num: int,
        queues: int = 1,
        ports: PortCounts | None = None,  # --metrics-per-service-port
    ) -> None:
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
        self.registry.register(
            DatapathCollector(status, range(queue_num, queue_num + queues), ports)
        )
