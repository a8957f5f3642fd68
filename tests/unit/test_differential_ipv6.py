"""Every data path must agree with the reference on IPv6 and SCTP, packet for packet:
verdicts, bytes, counters (test_differential.py does IPv4 TCP and UDP).

Hypothesis generates sequences over a dual-stack service: IPv6 TCP, UDP and SCTP flows in
both directions among IPv4 TCP, UDP and SCTP ones, ICMPv6 errors about them (Packet Too
Big among them), chains of extension headers, fragments, IPv4-mapped addresses, and
mutations and truncations of all of these, with endpoint changes, clock ticks and expiry
between.
"""

from __future__ import annotations

from array import array
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfqproxy.datapath import factory
from nfqproxy.datapath.fast.datapath import FastDatapath
from nfqproxy.model import Backend, ServicePort, Snapshot
from nfqproxy_lab.packets import (
    checksums6_verify,
    extension_header,
    fragment_header,
    icmp6_error,
    sctp_chunk,
    sctp_init_body,
    sctp_packet,
    tcp6_packet,
    tcp_packet,
    udp6_packet,
    udp_packet,
)
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import REFERENCE, new_datapath
from tests.helpers.differential import each_candidate, needs_fast, run

NOW = 5000.0
CIDRS = (IPv4Network("10.96.0.0/12"), IPv6Network("fd00:96::/108"))
CLIENTS = ["fd00:244:1::2", "fd00:244:1::3", "fd00:244:11::2"]  # the last is a backend too
BACKENDS = ["fd00:244:11::2", "fd00:244:12::2", "fd00:244:13::2", "fd00:244:14::2"]
V4_CLIENT, V4_BACKENDS = "10.244.1.2", ["10.244.11.2", "10.244.12.2", "10.244.13.2"]
TARGETS = [
    ("fd00:96::10", 80),  # web: TCP 80, UDP 53, SCTP 36412
    ("fd00:96::10", 36412),
    ("fd00:96::10", 443),  # a port not served
    ("fd00:96::20", 80),  # no endpoints
    ("fd00:96::99", 80),  # no service
    ("fd00:97::1", 80),  # outside the range: a reply, or nothing
    ("::ffff:10.96.0.10", 80),  # IPv4-mapped: never on the wire
]
PORTS = {"tcp": (80, 8080), "udp": (53, 5353), "sctp": (36412, 36412)}
FLAGS = [dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, dpkt.tcp.TH_RST]


def snapshot(chosen: frozenset[int], affinity: int) -> Snapshot:
    """web (TCP, UDP, SCTP) on both families with the chosen backends, and an empty one."""
    ports = {}
    for vip_text, backends in (("fd00:96::10", BACKENDS), ("10.96.0.10", V4_BACKENDS)):
        vip = ip_address(vip_text)
        for protocol, (port, target) in PORTS.items():
            picked = tuple(
                Backend(ip_address(b), target) for i, b in enumerate(backends) if i in chosen
            )
            key = (vip, protocol.upper(), port)
            ports[key] = ServicePort(
                f"d/web:{protocol}", vip, protocol.upper(), port, picked, affinity
            )
    empty = ip_address("fd00:96::20")
    ports[(empty, "TCP", 80)] = ServicePort("d/empty:http", empty, "TCP", 80, ())
    return Snapshot(ports)


def upper_packet(src: str, sport: int, dst: str, dport: int, proto: str, flags: int) -> bytes:
    if proto == "tcp":
        return tcp6_packet(src, sport, dst, dport, flags, b"d")
    if proto == "udp":
        return udp6_packet(src, sport, dst, dport, b"d")
    chunk = sctp_chunk(1, sctp_init_body(7)) if flags & dpkt.tcp.TH_SYN else sctp_chunk(0, b"x")
    return sctp_packet(src, sport, dst, dport, 0 if flags & dpkt.tcp.TH_SYN else 7, chunk)


def request(client: int, sport: int, target: int, proto: str, flags: int) -> bytes:
    host, port = TARGETS[target]
    if port in (80, 36412):
        port = PORTS[proto][0] if target in (0, 1) else port
    return upper_packet(CLIENTS[client], sport, host, port, proto, flags)


def reply(backend: int, client: int, sport: int, proto: str, flags: int) -> bytes:
    return upper_packet(BACKENDS[backend], PORTS[proto][1], CLIENTS[client], sport, proto, flags)


def v4_sctp(backend: int, sport: int, to_vip: bool) -> bytes:
    """SCTP over IPv4, either way."""
    chunk = sctp_chunk(0, b"four")
    if to_vip:
        return sctp_packet(V4_CLIENT, sport, "10.96.0.10", 36412, 7, chunk)
    return sctp_packet(V4_BACKENDS[backend % 3], 36412, V4_CLIENT, sport, 7, chunk)


def v4_flow_packet(backend: int, sport: int, proto: str, to_vip: bool, flags: int) -> bytes:
    """IPv4 TCP or UDP through the same dual-stack service, either way: its flows share
    the tables with the IPv6 ones."""
    port, target = PORTS[proto]
    if to_vip:
        if proto == "tcp":
            return tcp_packet(V4_CLIENT, sport, "10.96.0.10", port, flags, b"d")
        return udp_packet(V4_CLIENT, sport, "10.96.0.10", port, b"d")
    if proto == "tcp":
        return tcp_packet(V4_BACKENDS[backend % 3], target, V4_CLIENT, sport, flags, b"r")
    return udp_packet(V4_BACKENDS[backend % 3], target, V4_CLIENT, sport, b"r")


def about(client: int, sport: int, backend: int, proto: str, kind: int, node: bool) -> bytes:
    """An ICMPv6 error (or an echo request, 128) about a packet client -> backend."""
    quoted = upper_packet(CLIENTS[client], sport, BACKENDS[backend], PORTS[proto][1], proto, 2)
    source = "fd00:244::1" if node else BACKENDS[backend]
    return icmp6_error(source, CLIENTS[client], quoted + b"p" * 40, kind, 0)


@st.composite
def with_extensions(draw: st.DrawFn) -> bytes:
    """A request behind a chain of extension headers, fragments among them."""
    kinds = draw(st.lists(st.sampled_from([0, 43, 44, 60, 51]), min_size=1, max_size=10))
    proto = draw(st.sampled_from(["tcp", "udp", "sctp"]))
    upper = {"tcp": 6, "udp": 17, "sctp": 132}[proto]
    chain = b""
    for kind, following in zip(kinds, [*kinds[1:], upper], strict=False):
        if kind == 44:
            chain += fragment_header(following, draw(st.integers(0, 2)), draw(st.booleans()))
        elif kind == 51:
            chain += bytes([following, 1]) + bytes(10)
        else:
            chain += extension_header(following, draw(st.integers(0, 2)))
    plain = request(draw(st.integers(0, 2)), draw(st.integers(1000, 1009)), 0, proto, 2)
    raw = bytearray(plain[:40] + chain + plain[40:])
    raw[4:6] = (len(raw) - 40).to_bytes(2, "big")
    raw[6] = kinds[0]
    return bytes(raw)


protos = st.sampled_from(["tcp", "udp", "sctp"])
sports = st.integers(1000, 1009)
valid = st.one_of(
    st.builds(
        request,
        st.integers(0, 2),
        sports,
        st.integers(0, len(TARGETS) - 1),
        protos,
        st.sampled_from(FLAGS),
    ),
    st.builds(request, st.integers(0, 2), sports, st.just(0), protos, st.sampled_from(FLAGS)),
    st.builds(reply, st.integers(0, 3), st.integers(0, 2), sports, protos, st.sampled_from(FLAGS)),
    st.builds(v4_sctp, st.integers(0, 2), sports, st.booleans()),
    st.builds(
        v4_flow_packet,
        st.integers(0, 2),
        sports,
        st.sampled_from(["tcp", "udp"]),
        st.booleans(),
        st.sampled_from(FLAGS),
    ),
    st.builds(
        about,
        st.integers(0, 2),
        sports,
        st.integers(0, 3),
        protos,
        st.sampled_from([1, 2, 3, 4, 128]),
        st.booleans(),
    ),
    with_extensions(),
)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    packet = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 3))):
        packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    return bytes(packet[: draw(st.integers(0, len(packet)))])


def conversation(client: int, sport: int, proto: str, kind: int, node: bool) -> list[bytes]:
    """A new flow, then an answer and an ICMPv6 error from each backend it may have gone to:
    what finds the flow (a reply, an error to translate) as well as what does not."""
    packets = [request(client, sport, 0, proto, dpkt.tcp.TH_SYN)]
    for backend in range(3):
        packets += [reply(backend, client, sport, proto, dpkt.tcp.TH_ACK)]
        packets += [about(client, sport, backend, proto, kind, node)]
    return packets


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("packets"),
            st.builds(
                conversation,
                st.integers(0, 2),
                sports,
                protos,
                st.sampled_from([1, 2, 3, 4]),
                st.booleans(),
            ),
        ),
        st.tuples(st.just("packet"), valid),
        st.tuples(st.just("packet"), valid),
        st.tuples(st.just("packet"), damaged()),
        st.tuples(
            st.just("apply_snapshot"),
            st.builds(snapshot, st.frozensets(st.integers(0, 3)), st.sampled_from([0, 30])),
        ),
        st.tuples(st.just("tick"), st.sampled_from([1.0, 29.0, 31.0, 121.0, 25000.0])),
        st.tuples(st.just("expire"), st.none()),
    ),
    max_size=80,
)


@each_candidate
@given(operations, st.integers(1, 12), st.sampled_from([0, 30]))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_path_agrees_with_the_reference_on_ipv6_and_sctp(
    candidate: str, ops: list[tuple[str, Any]], capacity: int, affinity: int
) -> None:
    implementation = factory.DATAPATHS[candidate]
    assert {6} <= implementation.families and {132} <= implementation.protocols, candidate
    traces = []
    for name in (REFERENCE, candidate):
        clock = FakeClock(NOW)
        datapath = new_datapath(name, capacity=capacity, clock=clock, service_cidrs=CIDRS)
        datapath.apply(snapshot(frozenset({0, 1, 2}), affinity))
        traces.append(run(datapath, clock, ops))
    assert traces[0] == traces[1]


def as_checksum_partial6(packet: bytes) -> bytes:
    """An IPv6 packet as the kernel queues it with CHECKSUM_PARTIAL: TCP's or UDP's field
    holds the uncomplemented pseudo-header sum only; SCTP's CRC field is left to the NIC
    (zero here)."""
    proto, upper = packet[6], packet[40:]
    if proto == 132:
        return packet[:48] + bytes(4) + packet[52:]
    words = packet[8:40] + len(upper).to_bytes(4, "big") + bytes([0, 0, 0, proto])
    total = sum(int.from_bytes(words[i : i + 2], "big") for i in range(0, len(words), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    at = 40 + (16 if proto == 6 else 6)
    return packet[:at] + total.to_bytes(2, "big") + packet[at + 2 :]


plain_requests = st.builds(request, st.integers(0, 2), sports, st.just(0), protos, st.just(2))
plain_replies = st.builds(
    reply, st.integers(0, 3), st.integers(0, 2), sports, protos, st.sampled_from(FLAGS)
)


@needs_fast
@given(st.lists(st.one_of(plain_requests, plain_replies), min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_checksum_partial_ipv6_and_sctp_packets_leave_with_complete_checksums(
    packets: list[bytes],
) -> None:
    reference = new_datapath(REFERENCE, clock=FakeClock(NOW), service_cidrs=CIDRS)
    fast = FastDatapath(list(CIDRS), capacity=4096, clock=FakeClock(NOW))
    for datapath in (reference, fast):
        datapath.apply(snapshot(frozenset({0, 1, 2}), 0))
    for packet in packets:
        expected = reference.process(packet)
        action, reason, payload, _, _ = fast.core.process(as_checksum_partial6(packet), NOW, True)
        assert (action, reason) == (expected.action.value, expected.reason)
        if payload is None:
            continue
        assert expected.payload is not None
        if packet[6] == 132:
            assert payload == expected.payload  # the CRC recomputed whole
            continue
        assert checksums6_verify(payload)
        at = 40 + (16 if payload[6] == 6 else 6)
        # The same bytes, but for the checksum's representation of zero (0x0000 / 0xFFFF).
        assert (
            payload[:at] + payload[at + 2 :] == expected.payload[:at] + expected.payload[at + 2 :]
        )


@needs_fast
def test_the_compiled_core_refuses_an_ipv4_mapped_frontend() -> None:
    """Its tables hold IPv4 addresses as ::ffff:a.b.c.d: a mapped IPv6 VIP or backend would
    pass for an IPv4 one (the model refuses such addresses before they get here)."""
    fast = FastDatapath(list(CIDRS), capacity=16, clock=FakeClock(NOW))
    mapped = ip_address("::ffff:10.96.0.10").packed
    backend = ip_address(BACKENDS[0]).packed
    for vip, backends in ((mapped, [(backend, 80)]), (backend, [(mapped, 80)])):
        with pytest.raises(ValueError, match="IPv4-mapped"):
            fast.core.set_frontend(0, vip, 6, 80, backends, array("H", [0] * 7))
    assert fast.core.bytes_per_flow() <= 64 and fast.core.bytes_per_flow(6) == 104
