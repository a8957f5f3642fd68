"""The proxy process: source -> model -> data-path tables, hooks, and a status file.

Start order keeps traffic flowing: bind the queue, program the tables from a complete
list of the source, start giving verdicts, then install the hooks. Until the first sync,
service packets wait in the bound queue (or are dropped once it is full) and TCP sends
them again: none meets an empty table, which would reject it. With the hooks kept from a
previous process, that wait is what a restart costs open flows, however long the API
takes to answer (within TCP's own retry limits). Stop order reverses it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfqproxy import defaults, iptables_backend
from nfqproxy.control.server import ControlServer
from nfqproxy.datapath import factory
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.exposure import Exposure
from nfqproxy.fields import IPAddress
from nfqproxy.files import atomic_write
from nfqproxy.health import HealthServer, Liveness
from nfqproxy.hooks import HookConfig, HookError, HookManager
from nfqproxy.metrics import ProxyMetrics
from nfqproxy.model import IPNetwork, ObjectKey
from nfqproxy.sources.kubernetes import KubernetesSource, api_client, node_zone
from nfqproxy.sources.manifests import ManifestObjects, ManifestSource
from nfqproxy.sync_runner import BoundedFrequencyRunner
from nfqproxy.tracker import ChangeTracker

log = logging.getLogger(__name__)

STATUS_INTERVAL = 0.5
GC_FREEZE_AFTER = 1000  # service ports changed in one sync
EXPIRY_INTERVAL = 1.0
ZONE_GRACE = 5.0  # seconds the first sync waits for the node's zone once the lists are in


@dataclass(frozen=True)
class ProxyConfig:
    manifests: Path | None = None  # None: the Kubernetes API
    service_cidrs: tuple[IPNetwork, ...] = defaults.SERVICE_CIDRS
    queue_num: int = defaults.QUEUE_NUM
    node_name: str | None = None
    status_file: Path | None = None
    iptables: str = defaults.IPTABLES
    flow_capacity: int = defaults.FLOW_CAPACITY
    seed: int = defaults.SEED
    poll_interval: float = defaults.MANIFEST_POLL_INTERVAL
    datapath: str = field(default_factory=factory.default_datapath)  # a factory.DATAPATHS name
    min_sync_period: float = defaults.MIN_SYNC_PERIOD
    sync_period: float = defaults.SYNC_PERIOD
    api_server: str | None = None
    kubeconfig: str | None = None
    service_proxy_name: str | None = None
    node_zone: str | None = None  # for topology hints; from the Node's label if not given
    watch_timeout: tuple[int, int] = defaults.WATCH_TIMEOUT
    install_hooks: bool = True  # False: program the tables only (the controller benchmark)
    keep_hooks_on_exit: bool = False  # True: a restart or an upgrade takes over open flows
    fail_open: bool = False  # a full queue passes packets unproxied (compiled paths only)
    marks: MarkLayout = field(default_factory=MarkLayout)  # --mark-mask
    queues: int = 1  # --queues: NFQUEUE queues from queue_num on (offload: several)
    healthz_bind: tuple[str, int] | None = defaults.HEALTHZ_BIND
    metrics_bind: tuple[str, int] | None = defaults.METRICS_BIND
    metrics_per_service_port: bool = False  # a series per service port in /metrics
    # --cluster-cidr: which sources are the cluster's own (masquerade, externalTrafficPolicy)
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    nodeport_addresses: tuple[str | IPNetwork, ...] = defaults.NODEPORT_ADDRESSES
    node_ips: tuple[IPAddress, ...] = ()  # the node's primary addresses (--node-ip)
    control_socket: Path | None = None  # `nfqproxy services|flows|explain` ask here; None: off


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection inside: a cold sync allocates ~500k objects, and the full
    collections that triggers cost a third of its time. Reference counting frees all but
    cycles, and collection resumes afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Proxy:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.datapath, self.queue = factory.build(
            config.datapath,
            factory.DatapathSettings(
                config.service_cidrs,
                config.flow_capacity,
                config.seed,
                config.fail_open,
                marks=config.marks,
                queues=config.queues,
            ),
            config.queue_num,
        )
        self.hooks = HookManager(
            HookConfig(
                config.service_cidrs,
                config.queue_num,
                iptables_backend.resolve(config.iptables),
                marks=config.marks,
                queues=config.queues,
                first_packets_only=not factory.DATAPATHS[config.datapath].every_packet,
                cluster_cidrs=config.cluster_cidrs,
            )
        )
        self.exposure = Exposure(
            config.nodeport_addresses,
            config.node_ips,
            self.hooks.sets if config.install_hooks else None,
            lambda: self.health.healthy()[0],
            config.sync_period,
            versions=tuple(sorted({cidr.version for cidr in config.service_cidrs})),
        )
        self.source = (
            ManifestSource(config.manifests, config.service_cidrs) if config.manifests else None
        )
        self.kube: KubernetesSource | None = None
        self.tracker = ChangeTracker(
            config.service_cidrs, config.service_proxy_name, config.node_name, config.node_zone
        )
        self._reprogram_all = False
        self.node_zone = config.node_zone
        self.ready = False
        self.syncs = 0
        self.last_sync: float | None = None  # wall clock, of the last successful sync
        self.last_sync_seconds: float | None = None  # how long it took
        self.runner = BoundedFrequencyRunner(self.sync, config.min_sync_period, config.sync_period)
        self.metrics = ProxyMetrics(
            self.status,
            config.queue_num,
            config.queues,
            self.datapath.service_port_counts if config.metrics_per_service_port else None,
        )
        self.liveness = Liveness(
            config.sync_period, lambda: self.ready, lambda: self.runner.last_attempt
        )
        self.control = (
            ControlServer(
                config.control_socket,
                lambda: self.tracker.ports,
                self.datapath,
                config.seed,
                config.cluster_cidrs,
                flows_block=not factory.DATAPATHS[config.datapath].every_packet,
            )
            if config.control_socket is not None
            else None
        )
        self.health = HealthServer(
            lambda: self.last_sync, config.sync_period, self.metrics, liveness=self.liveness
        )

    async def on_change(self, objects: ManifestObjects) -> None:
        """The manifests changed: hand the objects to the tracker, and ask for a sync if any
        object changed. A file written again with the same content (the lab rewrites its
        services with its slices) is no change, as kube-proxy's trackers ignore updates that
        change nothing; it would otherwise spend the minimum sync interval, and hold back
        the real change that follows it."""
        if self.tracker.replace_all(objects.services, objects.endpoint_slices):
            self._queue_sync()

    def _service_event(self, key: ObjectKey, obj: Mapping[str, Any] | None) -> None:
        self.tracker.service_changed(key, obj)
        self._queue_sync()

    def _slice_event(self, key: ObjectKey, obj: Mapping[str, Any] | None) -> None:
        self.tracker.slice_changed(key, obj)
        self._queue_sync()

    def _queue_sync(self) -> None:
        self.metrics.last_queued.set_to_current_time()
        self.runner.request()

    def kubernetes_source(self, client: Any) -> KubernetesSource:
        """Informers that report each changed object to the tracker."""
        self.kube = KubernetesSource(
            client,
            self._service_event,
            self._slice_event,
            self.config.service_proxy_name,
            self.config.watch_timeout,
        )
        return self.kube

    async def sync(self) -> None:
        """Programs the data path with what changed since the last sync. Raises if that
        failed, so the runner retries; the last good tables stay in force meanwhile."""
        started = time.monotonic()
        self.tracker.set_node(self.config.node_name, self.node_zone)
        try:
            self.tracker.set_node_view(await self.exposure.node_view())
            with gc_paused():
                changes = self.tracker.flush()
                for error in changes.errors:
                    log.error("object skipped: %s", error)
                if self._reprogram_all:
                    # A failed sync left the tables behind the tracker: program the difference.
                    changed = self.datapath.apply(self.tracker.snapshot())
                else:
                    changed = self.datapath.apply_changes(changes.ports)
                self.exposure.apply(
                    changes.ports, lambda: self.tracker.ports.items(), self._reprogram_all
                )
            await self.exposure.update_health(self.tracker.health_checks)
        except Exception:
            # Tables are swapped only once every frontend is built, so the old ones stand.
            self._reprogram_all = True
            log.error("sync failed; the data path keeps its last good tables")
            self.write_status()
            raise
        self._reprogram_all = False
        self.syncs += 1
        self.last_sync = time.time()
        self._observe_programming_latency(changes.trigger_times, self.last_sync)
        self.last_sync_seconds = time.monotonic() - started
        self.metrics.sync_duration.observe(self.last_sync_seconds)
        self.metrics.last_sync.set(self.last_sync)
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "sync %d: %d service ports changed in %.1f ms",
            self.syncs,
            len(changed),
            (time.monotonic() - started) * 1000,
        )
        if len(changed) >= GC_FREEZE_AFTER:
            # Tens of thousands of long-lived objects just arrived (a cold start or a
            # re-list). Full collections would walk them all, pausing syncs for 100s of ms;
            # freezing exempts them. They are acyclic, so reference counting still frees them.
            gc.freeze()
        if not self.ready:
            # The tables hold a complete list now: packets held in the queue meanwhile get
            # their verdicts, and new ones are sent to the queue.
            self.queue.start(asyncio.get_running_loop())
            if self.config.install_hooks:
                self.hooks.install()
            self.ready = True
        self.write_status()

    def _observe_programming_latency(
        self, trigger_times: list[float], programmed_at: float
    ) -> None:
        """kube-proxy's network programming latency: one sample per endpoint change."""
        for changed_at in trigger_times:
            self.metrics.network_programming.observe(max(0.0, programmed_at - changed_at))

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "datapath": self.config.datapath,
            "syncs": self.syncs,
            "last_sync": self.last_sync,
            "last_sync_seconds": self.last_sync_seconds,
            "manifest_errors": sorted(self.source.errors.values()) if self.source else [],
            "api": self._api_status(),
            "object_errors": self.tracker.errors(),  # as of the last sync
            "queue": self.queue.stats(),
            "exposure": self.exposure.status(),
            # Clients of `nfqproxy trace`: while 0, the data path records no decisions.
            "tracers": len(self.control.tracing.tracers) if self.control else 0,
            **self.datapath.status(),
        }

    def _api_status(self) -> dict[str, object]:
        if self.kube is None:
            return {}
        informers = (self.kube.services, self.kube.endpoint_slices)
        return {
            i.name: {
                "objects": len(i.cache),
                "synced": i.synced.is_set(),
                "lists": i.relists,
                "errors": i.errors,
                "resourceVersion": i.resource_version,
            }
            for i in informers
        }

    async def _run_after_sync(self, client: Any = None) -> None:
        assert self.kube is not None
        async with asyncio.TaskGroup() as group:
            zone = None
            if client is not None and self.node_zone is None and self.config.node_name:
                # Asked while the informers list, and again while the API cannot answer.
                zone = group.create_task(self._learn_zone(client, self.config.node_name))
            await self.kube.wait_synced()  # program nothing until both caches are full
            log.info("services and endpoint slices synced from the API")
            if zone is not None and not zone.done():
                # The lists came back, so the Node usually follows at once; if it does not,
                # serve without hints rather than keep every service waiting for a label.
                done, _ = await asyncio.wait([zone], timeout=ZONE_GRACE)
                if not done:
                    log.warning("this node's zone is not known yet: topology hints wait for it")
            await self.runner.run()

    async def _learn_zone(self, client: Any, node_name: str) -> None:
        self.node_zone = await node_zone(client, node_name)
        if self.node_zone and self.ready:
            self._queue_sync()  # the first sync went without it: apply the hints now

    def write_status(self) -> None:
        """The status file; a failure to build or write it is logged, never fatal: the
        tables and hooks keep serving (a full disk, or a bug in a status section)."""
        if self.config.status_file is None:
            return
        try:
            atomic_write(self.config.status_file, json.dumps(self.status(), indent=1))
        except Exception:
            log.exception("cannot write the status file %s", self.config.status_file)

    async def _housekeeping(self) -> None:
        last_expiry = time.monotonic()
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self.liveness.beat()
            if time.monotonic() - last_expiry >= EXPIRY_INTERVAL:
                self.datapath.expire()
                last_expiry = time.monotonic()
            self.write_status()

    async def _watch_hooks(self) -> None:
        """Restores the hook rules within one sync period of someone flushing them."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.sync_period / 2)
            if not self.ready or not self.config.install_hooks:
                continue
            try:
                missing = await loop.run_in_executor(None, self.hooks.missing)
                if missing:
                    log.warning(
                        "hook rules missing (%s): flushed by someone else; restoring them",
                        "; ".join(missing),
                    )
                    await loop.run_in_executor(None, self.hooks.install)
                    self.metrics.hook_restores.inc()
            except HookError as exc:
                log.error("cannot check or restore the hook rules: %s; trying again", exc)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        client = None
        if self.source is not None:
            self.source.refresh()  # before the first sync: never program an empty table
            objects = self.source.objects()
            self.tracker.replace_all(objects.services, objects.endpoint_slices)
            feed = self.source.watch(self.on_change, self.config.poll_interval)
            syncing = self.runner.run()
        else:
            client = await api_client(self.config.api_server, self.config.kubeconfig)
            feed, syncing = self.kubernetes_source(client).run(), self._run_after_sync(client)
        self.queue.bind()  # packets wait here, unanswered, until the first sync
        tasks: list[asyncio.Task[None]] = []
        try:
            self.liveness.beat()  # the start (imports, API client, bind) is not a stall
            await self.health.start(self.config.healthz_bind, self.config.metrics_bind)
            if self.control is not None:
                try:
                    await self.control.start()
                except OSError as exc:  # inspection is not worth stopping the proxy for
                    log.error("no inspection socket: %s", exc)
                    self.control = None
            tasks = [
                asyncio.create_task(feed),
                asyncio.create_task(syncing),
                asyncio.create_task(self._housekeeping()),
                asyncio.create_task(self._watch_hooks()),
            ]
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            log.info("stopping")
        finally:
            for task in tasks:
                task.cancel()
            await self.health.stop()
            if self.control is not None:
                await self.control.stop()
            await self.exposure.health.stop()
            if self.config.keep_hooks_on_exit:
                # Meanwhile service packets wait in vain at the queue and are retransmitted;
                # the next process recovers their flows (docs/design.md, "Restarts").
                log.info("leaving the hook rules for the next process (--keep-hooks-on-exit)")
            else:
                self.hooks.remove()
            self.queue.close()
            if client is not None:
                await client.close()
            self.ready = False
            self.write_status()


def status_summary(status: Mapping[str, Any]) -> str:
    """A few human lines about the connection table, for the demo and `status`."""
    table = status.get("connection_table", {})
    lines = [f"connection table: {table.get('flows', 0)} flows of {table.get('capacity', 0)}"]
    lines += [f"  {state:<22} {count}" for state, count in table.get("by_state", {}).items()]
    return "\n".join(lines)
