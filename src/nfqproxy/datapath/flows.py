"""Flow states, their timeouts and the TCP state machine: what every data path tracks.

The fast path's S_* enum follows FlowState's order and takes its timeouts from
Timeouts.in_state_order(); tests/unit/test_datapath_contract.py checks the names.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import astuple, dataclass
from enum import Enum
from ipaddress import ip_address
from typing import Protocol

from nfqproxy.model import Backend

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132

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

    def in_state_order(self) -> tuple[float, ...]:
        """The timeouts in FlowState's order (the fields are declared in that order)."""
        return astuple(self)


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


# Seconds between scans of a full connection table for expired flows; in between, a new
# flow evicts the oldest. The fast path reads it from here.
FULL_SCAN_INTERVAL = 1.0


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
        # SCTP flows take UDP's states (the reference path's; docs/design.md).
        name = {IPPROTO_TCP: "tcp", IPPROTO_SCTP: "sctp"}.get(proto, "udp")
        by_state[f"{name}/{state}"] += 1
        by_backend[f"{service} -> {backend}"] += 1
    return {
        "flows": len(rows),
        "capacity": capacity,
        "evicted": evicted,
        "expired": expired,
        "by_state": dict(sorted(by_state.items())),
        "by_backend": dict(sorted(by_backend.items())),
    }


def affinity_capacity(flow_capacity: int) -> int:
    """Clients remembered for sessionAffinity: a quarter of the flow table."""
    return max(1, flow_capacity // 4)


def endpoint_text(packed: bytes, port: int) -> str:
    """A packed address and port as every status and command shows them: 10.244.1.2:8080,
    [fd00::2]:8080 (Backend.name's form, the IPv6 colons kept apart from the port's)."""
    return Backend(ip_address(packed), port).name


class FlowTuple(Protocol):
    """What a table's flow names alike (the reference's Flow, conntrack's TrackedFlow)."""

    @property
    def proto(self) -> int: ...
    @property
    def client_ip(self) -> bytes: ...
    @property
    def client_port(self) -> int: ...
    @property
    def vip(self) -> bytes: ...
    @property
    def vport(self) -> int: ...
    @property
    def backend_ip(self) -> bytes: ...
    @property
    def backend_port(self) -> int: ...


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One tracked flow as every data path lists it (`nfqproxy flows`): addresses packed."""

    proto: int
    client: bytes
    client_port: int
    vip: bytes
    vport: int
    backend: bytes
    backend_port: int
    service: str  # namespace/name:port, "?" when its service port is gone
    state: str  # a FlowState value, or "conntrack" where the kernel holds the flow
    expires_in: float  # seconds
    # Seconds since the table first saw it (the fast path's to the second); None where the
    # table keeps no start (conntrack without nf_conntrack_timestamp).
    age: float | None = None

    @classmethod
    def of(
        cls, flow: FlowTuple, service: str, state: str, expires_in: float, age: float | None
    ) -> FlowRecord:
        """From a flow of any table that names its addresses and ports as these do."""
        return cls(
            flow.proto,
            flow.client_ip,
            flow.client_port,
            flow.vip,
            flow.vport,
            flow.backend_ip,
            flow.backend_port,
            service,
            state,
            expires_in,
            age,
        )

    def as_json(self) -> dict[str, object]:
        return {
            "protocol": {IPPROTO_TCP: "TCP", IPPROTO_SCTP: "SCTP"}.get(self.proto, "UDP"),
            "client": str(ip_address(self.client)),
            "client_port": self.client_port,
            "vip": str(ip_address(self.vip)),
            "vport": self.vport,
            "backend": str(ip_address(self.backend)),
            "backend_port": self.backend_port,
            "service": self.service,
            "state": self.state,
            "expires_in": round(self.expires_in, 1),
            "age": None if self.age is None else round(self.age, 1),
        }
