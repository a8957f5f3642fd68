"""The reference connection table: both directions of every proxied flow.

A flow is keyed twice: by the 5-tuple the client sent (client -> VIP) and by the 5-tuple
the backend replies with (backend -> client). Entries expire by protocol state, as in the
kernel's conntrack; when the table is full the oldest flow is evicted, so memory stays
bounded whatever arrives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nfqproxy import defaults
from nfqproxy.datapath.flows import (
    FULL_SCAN_INTERVAL,
    FlowKey,
    FlowState,
    Timeouts,
    endpoint_text,
    flow_summary,
    next_state,
)


@dataclass(slots=True)
class Flow:
    proto: int
    client_ip: bytes
    client_port: int
    vip: bytes
    vport: int
    backend_ip: bytes
    backend_port: int
    service: str
    state: FlowState
    expires: float = 0.0
    # Decided with the flow: a new connection that reuses its 5-tuple gets it too.
    masquerade: bool = False
    created: float = 0.0  # when the table took it in

    @property
    def forward_key(self) -> FlowKey:
        return (self.proto, self.client_ip, self.client_port, self.vip, self.vport)

    @property
    def reply_key(self) -> FlowKey:
        return (self.proto, self.backend_ip, self.backend_port, self.client_ip, self.client_port)

    @property
    def backend(self) -> str:
        return endpoint_text(self.backend_ip, self.backend_port)


class ConnectionTable:
    """Flows by both directions' keys, with expiry and bounded size."""

    def __init__(
        self, capacity: int = defaults.FLOW_CAPACITY, timeouts: Timeouts | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError(f"connection table capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.timeouts = timeouts or Timeouts()
        # Insertion order doubles as age order for eviction.
        self._forward: dict[FlowKey, Flow] = {}
        self._reply: dict[FlowKey, Flow] = {}
        self.evicted = 0
        self.expired = 0
        self._last_full_scan = -math.inf

    def __len__(self) -> int:
        return len(self._forward)

    def flows(self) -> list[Flow]:
        return list(self._forward.values())

    def _live(self, flow: Flow | None, now: float) -> Flow | None:
        if flow is not None and flow.expires <= now:
            self.remove(flow)
            self.expired += 1
            return None
        return flow

    def lookup_forward(self, key: FlowKey, now: float) -> Flow | None:
        return self._live(self._forward.get(key), now)

    def lookup_reply(self, key: FlowKey, now: float) -> Flow | None:
        return self._live(self._reply.get(key), now)

    def add(self, flow: Flow, now: float) -> None:
        """Records a new flow, expiring or evicting old ones if the table is full.

        A full table is scanned for expired flows at most once per FULL_SCAN_INTERVAL; in
        between, a new flow evicts the oldest. A scan for every new flow made a SYN flood
        cost O(table) per packet, which overflowed the queue (the fast path's rate fell
        from about 65k to 9k new flows a second at 65,536 flows)."""
        if len(self._forward) >= self.capacity and now - self._last_full_scan >= FULL_SCAN_INTERVAL:
            self.expire(now)
            self._last_full_scan = now
        while len(self._forward) >= self.capacity:
            self.remove(next(iter(self._forward.values())))
            self.evicted += 1
        # An old flow holding either key gives way to the new one, whole, so that neither
        # index keeps a half-replaced flow.
        for stale in (self._forward.get(flow.forward_key), self._reply.get(flow.reply_key)):
            if stale is not None:
                self.remove(stale)
        flow.expires = now + self.timeouts.for_state(flow.state)
        flow.created = now
        self._forward[flow.forward_key] = flow
        self._reply[flow.reply_key] = flow

    def observe(self, flow: Flow, from_client: bool, tcp_flags: int, now: float) -> None:
        """Advances the flow's state by one packet and pushes back its expiry."""
        flow.state = next_state(flow.state, from_client, tcp_flags)
        flow.expires = now + self.timeouts.for_state(flow.state)

    def retire(self, flow: Flow, now: float) -> None:
        """Marks a TCP flow whose backend left its service."""
        flow.state = FlowState.TCP_BACKEND_GONE
        flow.expires = now + self.timeouts.for_state(flow.state)

    def remove(self, flow: Flow) -> None:
        if self._forward.get(flow.forward_key) is flow:
            del self._forward[flow.forward_key]
        if self._reply.get(flow.reply_key) is flow:
            del self._reply[flow.reply_key]

    def expire(self, now: float) -> int:
        """Removes every flow past its expiry; returns how many."""
        dead = [flow for flow in self._forward.values() if flow.expires <= now]
        for flow in dead:
            self.remove(flow)
        self.expired += len(dead)
        return len(dead)

    def summary(self) -> dict[str, object]:
        """Counts for status output: flows by protocol and state, and by backend."""
        rows = [(f.proto, f.state.value, f.service, f.backend) for f in self._forward.values()]
        return flow_summary(rows, self.capacity, self.evicted, self.expired)


# (protocol, client address, VIP, service port)
AffinityKey = tuple[int, bytes, bytes, int]


@dataclass(slots=True)
class Affinity:
    backend_ip: bytes
    backend_port: int
    expires: float


class AffinityTable:
    """sessionAffinity ClientIP: the backend each client last got, per service port.

    As kube-proxy's `recent` match: a new flow that finds a live entry goes to its backend
    (if that backend still serves) and renews the entry for the timeout. When the table is
    full a new client is not remembered and gets the ordinary Maglev choice: clients that
    already stick keep sticking, whatever a flood of new sources does.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: dict[AffinityKey, Affinity] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: AffinityKey, now: float) -> Affinity | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= now:
            del self._entries[key]
            return None
        return entry

    def peek(self, key: AffinityKey, now: float) -> Affinity | None:
        """lookup without forgetting an expired entry: for inspection, which changes nothing."""
        entry = self._entries.get(key)
        return entry if entry is not None and entry.expires > now else None

    def add(self, key: AffinityKey, entry: Affinity) -> bool:
        """Remembers a client; False if the table is full."""
        if len(self._entries) >= self.capacity:
            return False
        self._entries[key] = entry
        return True

    def expire(self, now: float) -> int:
        gone = [key for key, entry in self._entries.items() if entry.expires <= now]
        for key in gone:
            del self._entries[key]
        return len(gone)
