"""What this node serves beyond ClusterIPs, kept in step at each sync: the addresses its
NodePorts answer on, the hooks' sets of external frontends, the healthCheckNodePort
servers, and what the status, /metrics and the sync log say about them.

The data path holds the external frontends like any other (nfqproxy.external builds them);
this is the rest of the node's side of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from nfqproxy import ipsets, node_addresses
from nfqproxy.fields import IPAddress
from nfqproxy.model import (
    HealthCheck,
    IPNetwork,
    NodeView,
    ObjectKey,
    ServicePort,
    ServicePortKey,
)
from nfqproxy.service_health import ServiceHealthServers

log = logging.getLogger(__name__)

STATUS_LIST_LIMIT = 1000  # external frontends listed one by one in the status file


class Exposure:
    def __init__(
        self,
        nodeport_addresses: tuple[str | IPNetwork, ...],
        node_ips: tuple[IPAddress, ...],
        sets: ipsets.FrontendSets | None,  # None: no hooks (the controller benchmark)
        proxy_healthy: Callable[[], bool],
        refresh_every: float,
        clock: Callable[[], float] = time.monotonic,
        versions: tuple[int, ...] = (4,),  # the IP families served (the service ranges')
    ) -> None:
        self.nodeport_addresses = nodeport_addresses
        self.node_ips = node_ips
        self.versions = versions
        self.sets = sets
        self.refresh_every = refresh_every
        self.clock = clock
        self.view: NodeView | None = None
        self._resolved_at = 0.0
        self.external: dict[ServicePortKey, ServicePort] = {}
        self._sets_stale = True
        self.health = ServiceHealthServers(proxy_healthy)

    async def node_view(self) -> NodeView:
        """The node's NodePort addresses, read again once per refresh period (a sync
        period): kube-proxy, too, notices address changes at its periodic resync. Read on
        a worker thread: pyroute2's synchronous socket cannot run inside the event loop."""
        now = self.clock()
        if self.view is None or now - self._resolved_at >= self.refresh_every:
            addresses = await asyncio.get_running_loop().run_in_executor(
                None,
                node_addresses.resolve,
                self.nodeport_addresses,
                self.node_ips,
                self.versions,
            )
            if self.view is not None and addresses != self.view.nodeport_ips:
                log.info("NodePort addresses changed: %s", ", ".join(map(str, addresses)) or "none")
            elif self.view is None and not addresses:
                log.warning(
                    "no address qualifies for NodePorts (--nodeport-addresses %s): "
                    "NodePorts are served nowhere; give --node-ip",
                    ",".join(map(str, self.nodeport_addresses)),
                )
            self.view, self._resolved_at = NodeView(addresses), now
        return self.view

    def apply(
        self,
        changed: Mapping[ServicePortKey, ServicePort | None],
        every_port: Callable[[], Iterable[tuple[ServicePortKey, ServicePort]]],
        reprogrammed: bool,
    ) -> None:
        """The ports a sync changed (or, reprogrammed, every port): logs the external ones
        and brings the hooks' sets in step. Raises if the sets cannot be written; the next
        sync then writes them whole."""
        if reprogrammed or self._sets_stale:
            changed = {key: None for key in self.external} | dict(every_port())
        added, removed = ipsets.SetContents(), ipsets.SetContents()
        for key, port in changed.items():
            old = self.external.get(key)
            new = port if port is not None and port.kind != "ClusterIP" else None
            if new is not None:
                if old is None or (old.kind, old.policy, old.name) != (
                    new.kind,
                    new.policy,
                    new.name,
                ):
                    log.info(
                        "%s %s serves %s (%s)", new.kind, new.address_port, new.name, new.policy
                    )
                self.external[key] = new
            elif old is not None:
                log.info("%s %s no longer serves %s", old.kind, old.address_port, old.name)
                del self.external[key]
            # Only the address, port and source ranges are in the sets: an endpoint change
            # leaves them alone.
            if old is None or new is None or old.source_ranges != new.source_ranges:
                before, after = ipsets.port_entries(old), ipsets.port_entries(new)
                added, removed = added | (after - before), removed | (before - after)
        if self.sets is None:
            return
        if self._sets_stale:
            self.sets.replace(ipsets.set_contents(self.external.values()))
            self._sets_stale = False
        elif added or removed:
            self._sets_stale = True  # until this change is known to have gone in
            self.sets.change(added, removed)
            self._sets_stale = False

    async def update_health(self, checks: Mapping[ObjectKey, HealthCheck]) -> None:
        await self.health.update(checks)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for port in self.external.values():
            counts[port.kind] = counts.get(port.kind, 0) + 1
        return counts

    def status(self) -> dict[str, object]:
        listed: dict[str, object]
        if len(self.external) > STATUS_LIST_LIMIT:
            listed = {"detail": f"left out above {STATUS_LIST_LIMIT} external frontends"}
        else:
            listed = {
                port.address_port: f"{port.kind} {port.name} ({port.policy})"
                for port in sorted(
                    self.external.values(), key=lambda p: (p.vip.version, p.vip, p.port)
                )
            }
        return {
            "nodeport_addresses": [str(a) for a in (self.view.nodeport_ips if self.view else ())],
            "external_frontends": self.counts(),
            "served": listed,
            "health_checks": self.health.status(),
        }
