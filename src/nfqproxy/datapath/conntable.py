"""The reference connection table: both directions of every proxied flow.

A flow is keyed twice: by the 5-tuple the client sent (client -> VIP) and by the 5-tuple
the backend replies with (backend -> client). Entries expire by protocol state, as in the
kernel's conntrack; when the table is full the oldest flow is evicted, so memory stays
bounded whatever arrives.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from ipaddress import ip_address

IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

# (protocol, source address, source port, destination address, destination port)
FlowKey = tuple[int, bytes, int, bytes, int]


class FlowState(Enum):
    TCP_SYN_SENT = "syn_sent"
    TCP_ESTABLISHED = "established"
    TCP_CLOSING = "closing"
    TCP_RESET = "reset"
    UDP_UNREPLIED = "unreplied"
    UDP_REPLIED = "replied"
    # Its backend left the service: the client's next packet is answered with a reset.
    TCP_BACKEND_GONE = "backend_gone"


@dataclass(frozen=True)
class Timeouts:
    """Seconds a flow lives after its last packet, by state (Cilium's and conntrack's scale)."""

    tcp_syn_sent: float = 120.0
    tcp_established: float = 21600.0
    tcp_closing: float = 120.0
    tcp_reset: float = 10.0
    udp_unreplied: float = 30.0
    udp_replied: float = 120.0
    tcp_backend_gone: float = 10.0

    def for_state(self, state: FlowState) -> float:
        return {
            FlowState.TCP_SYN_SENT: self.tcp_syn_sent,
            FlowState.TCP_ESTABLISHED: self.tcp_established,
            FlowState.TCP_CLOSING: self.tcp_closing,
            FlowState.TCP_RESET: self.tcp_reset,
            FlowState.UDP_UNREPLIED: self.udp_unreplied,
            FlowState.UDP_REPLIED: self.udp_replied,
            FlowState.TCP_BACKEND_GONE: self.tcp_backend_gone,
        }[state]


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

    @property
    def forward_key(self) -> FlowKey:
        return (self.proto, self.client_ip, self.client_port, self.vip, self.vport)

    @property
    def reply_key(self) -> FlowKey:
        return (self.proto, self.backend_ip, self.backend_port, self.client_ip, self.client_port)

    @property
    def backend(self) -> str:
        return f"{ip_address(self.backend_ip)}:{self.backend_port}"


def is_connection_request(proto: int, tcp_flags: int) -> bool:
    """A TCP SYN without ACK: the first packet of a connection, or that packet again."""
    return proto == IPPROTO_TCP and bool(tcp_flags & TCP_SYN) and not tcp_flags & TCP_ACK


def initial_state(proto: int, tcp_flags: int) -> FlowState:
    """The state of a flow first seen with this packet from the client.

    A TCP packet without SYN is a flow picked up mid-stream (after a restart, say); it is
    taken as established, as conntrack does with nf_conntrack_tcp_loose.
    """
    if proto != IPPROTO_TCP:
        return FlowState.UDP_UNREPLIED
    if tcp_flags & TCP_RST:
        return FlowState.TCP_RESET
    if is_connection_request(proto, tcp_flags):
        return FlowState.TCP_SYN_SENT
    return FlowState.TCP_ESTABLISHED


def next_state(state: FlowState, from_client: bool, tcp_flags: int) -> FlowState:
    """The state after one more packet of the flow."""
    if state is FlowState.TCP_BACKEND_GONE:
        return state  # nothing the backend still sends brings the flow back
    if state in (FlowState.UDP_UNREPLIED, FlowState.UDP_REPLIED):
        return state if from_client else FlowState.UDP_REPLIED
    if tcp_flags & TCP_RST:
        return FlowState.TCP_RESET
    if tcp_flags & TCP_FIN or state is FlowState.TCP_CLOSING:
        return FlowState.TCP_CLOSING
    if state is FlowState.TCP_SYN_SENT and from_client and tcp_flags & TCP_SYN:
        return state  # a retransmitted SYN
    if state is FlowState.TCP_RESET:
        # Only a new SYN revives a reset flow (the client reused the port).
        return FlowState.TCP_SYN_SENT if tcp_flags & TCP_SYN else state
    return FlowState.TCP_ESTABLISHED


FULL_SCAN_INTERVAL = 1.0  # seconds; the fast path's cext/fastpath.pyx has the same


class ConnectionTable:
    """Flows by both directions' keys, with expiry and bounded size."""

    def __init__(self, capacity: int = 262144, timeouts: Timeouts | None = None) -> None:
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


# Status is written twice a second; past this many flows it leaves out the per-backend
# breakdown, which costs a Python object per flow.
SUMMARY_DETAIL_LIMIT = 10_000


def flow_summary(
    rows: list[tuple[int, str, str, str]], capacity: int, evicted: int, expired: int
) -> dict[str, object]:
    """The status summary of a connection table, from (protocol, state, service, backend)."""
    by_state: Counter[str] = Counter()
    by_backend: Counter[str] = Counter()
    for proto, state, service, backend in rows:
        by_state[f"{'tcp' if proto == IPPROTO_TCP else 'udp'}/{state}"] += 1
        by_backend[f"{service} -> {backend}"] += 1
    return {
        "flows": len(rows),
        "capacity": capacity,
        "evicted": evicted,
        "expired": expired,
        "by_state": dict(sorted(by_state.items())),
        "by_backend": dict(sorted(by_backend.items())),
    }


# (protocol, client address, VIP, service port)
AffinityKey = tuple[int, bytes, bytes, int]


def affinity_capacity(flow_capacity: int) -> int:
    """Clients remembered for sessionAffinity: a quarter of the flow table."""
    return max(1, flow_capacity // 4)


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
