"""Every data path must agree with the reference packet for packet: verdicts, bytes,
counters.

Hypothesis generates sequences of valid flows in both directions, endpoint changes, clock
ticks, and malformed packets (random bytes, mutations and truncations of valid ones), and
feeds each sequence to the reference and to each other registered data path (the
candidate). A data path registered in the factory is compared here with no change.
"""

from __future__ import annotations

from ipaddress import IPv4Network, ip_address
from typing import Any

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfqproxy.datapath import factory
from nfqproxy.datapath.fast.datapath import FastDatapath
from nfqproxy.datapath.marks import SOURCE_NODE, SOURCE_OFF_CLUSTER, SOURCE_POD
from nfqproxy.datapath.verdicts import Action
from nfqproxy.model import Backend, ServicePort, Snapshot
from nfqproxy_lab.packets import (
    checksums_verify,
    icmp_error,
    sctp_or_about_sctp,
    tcp_packet,
    udp_packet,
)
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import REFERENCE, new_datapath
from tests.helpers.differential import each_candidate, needs_fast, run
from tests.helpers.snapshots import BACKENDS, snapshot

NOW = 5000.0  # where every test clock starts
CLIENTS = ["10.244.1.2", "10.244.1.3", "10.244.11.2"]  # the last is also a backend: hairpin
TARGETS = [
    ("10.96.0.10", 80),
    ("10.96.0.10", 53),
    ("10.96.0.20", 80),
    ("10.96.0.10", 443),
    ("10.96.9.9", 80),
    ("10.97.0.1", 80),
    ("192.168.0.1", 30080),  # a NodePort, externalTrafficPolicy Local (with external frontends)
    ("192.0.2.9", 80),  # an external IP, Cluster
]
# The source bits the hooks put on a queued packet's mark: none, pod, off-cluster, node
# (off-cluster too, as with --cluster-cidr), and a node address inside the cluster CIDR.
SOURCES = [
    0,
    SOURCE_POD,
    SOURCE_OFF_CLUSTER,
    SOURCE_NODE | SOURCE_OFF_CLUSTER,
    SOURCE_NODE | SOURCE_POD,
]
FLAGS = [
    dpkt.tcp.TH_SYN,
    dpkt.tcp.TH_ACK,
    dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK,
    dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK,
    dpkt.tcp.TH_RST,
    dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH,
]


def request(client: int, sport: int, target: int, proto: str, flags: int, payload: bytes) -> bytes:
    host, port = TARGETS[target]
    if proto == "udp":
        return udp_packet(CLIENTS[client], sport, host, 53 if port == 80 else port, payload)
    return tcp_packet(CLIENTS[client], sport, host, port, flags, payload)


def reply(backend: int, client: int, sport: int, proto: str, flags: int) -> bytes:
    if proto == "udp":
        return udp_packet(BACKENDS[backend], 5353, CLIENTS[client], sport, b"r")
    return tcp_packet(BACKENDS[backend], 8080, CLIENTS[client], sport, flags, b"r")


protos = st.sampled_from(["tcp", "udp"])
sports = st.integers(1000, 1019)
valid_requests = st.builds(
    request,
    st.integers(0, 2),
    sports,
    st.integers(0, len(TARGETS) - 1),
    protos,
    st.sampled_from(FLAGS),
    st.binary(max_size=8),
)
valid_replies = st.builds(
    reply, st.integers(0, 3), st.integers(0, 2), sports, protos, st.sampled_from(FLAGS)
)


def icmp_about(
    client: int,
    sport: int,
    backend: int,
    proto: str,
    quote: int,
    icmp_type: int,
    from_backend: bool,
) -> bytes:
    """An ICMP error about a packet client -> backend, as the backend or the node sends it."""
    if proto == "udp":
        quoted = udp_packet(CLIENTS[client], sport, BACKENDS[backend], 5353, b"q" * 40)
    else:
        quoted = tcp_packet(CLIENTS[client], sport, BACKENDS[backend], 8080, payload=b"x" * 40)
    source = BACKENDS[backend] if from_backend else "10.244.0.1"
    return icmp_error(source, CLIENTS[client], quoted, icmp_type, 4 if icmp_type == 3 else 0, quote)


icmp_errors = st.builds(
    icmp_about,
    st.integers(0, 2),
    sports,
    st.integers(0, 3),
    protos,
    st.sampled_from([28, 36, 48, 68]),
    st.sampled_from([3, 3, 11, 12, 0, 8]),
    st.booleans(),
)
valid = st.one_of(valid_requests, valid_replies, icmp_errors)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    packet = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    return bytes(packet)


@st.composite
def bad_headers(draw: st.DrawFn) -> bytes:
    """A valid packet with its IHL, total length or TCP data offset set at random."""
    packet = bytearray(draw(valid))
    field = draw(st.sampled_from(["ihl", "total", "doff"]))
    if field == "ihl":
        packet[0] = 0x40 | draw(st.integers(0, 15))
    elif field == "total":
        packet[2:4] = draw(st.integers(0, len(packet) + 8)).to_bytes(2, "big")
    elif packet[9] == 6:
        packet[32] = draw(st.integers(0, 15)) << 4
    return bytes(packet)


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    packet = draw(valid)
    return packet[: draw(st.integers(0, len(packet)))]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("packet"), valid),
        st.tuples(st.just("packet"), valid),
        st.tuples(st.just("packet"), st.one_of(mutated(), truncated(), st.binary(max_size=64))),
        st.tuples(st.just("packet"), bad_headers()),
        st.tuples(st.just("sourced"), st.tuples(st.sampled_from(SOURCES), valid_requests)),
        # Several new flows from one client to web: what session affinity acts on.
        st.tuples(
            st.just("packets"),
            st.builds(
                lambda client, proto, sports: [
                    request(client, sport, 0, proto, dpkt.tcp.TH_SYN, b"") for sport in sports
                ],
                st.integers(0, 2),
                protos,
                st.lists(st.integers(2000, 2100), min_size=1, max_size=6),
            ),
        ),
        st.tuples(
            st.just("apply"),
            st.tuples(
                st.frozensets(st.integers(0, 3)), st.sampled_from([0, 30, 100]), st.booleans()
            ),
        ),
        st.tuples(st.just("tick"), st.sampled_from([1.0, 20.0, 29.0, 31.0, 121.0, 25000.0])),
        st.tuples(st.just("expire"), st.none()),
    ),
    max_size=80,
)


def _beyond(candidate: str, op: tuple[str, Any]) -> bool:
    """Whether the operation holds a packet of a family or protocol the candidate does
    not serve."""
    kind, arg = op
    if kind not in ("packet", "packets", "sourced"):
        return False
    implementation = factory.DATAPATHS[candidate]
    packets = arg if kind == "packets" else [arg[1]] if kind == "sourced" else [arg]
    return any(
        (p[0] >> 4 == 6 and 6 not in implementation.families)
        or (sctp_or_about_sctp(p) and 132 not in implementation.protocols)
        for p in packets
        if len(p) >= 20
    )


@each_candidate
@given(operations, st.integers(1, 12), st.sampled_from([0, 30, 100]), st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_path_agrees_with_the_reference_on_every_packet(
    candidate: str, ops: list[tuple[str, Any]], capacity: int, affinity: int, external: bool
) -> None:
    # A candidate that declares no IPv6 or SCTP (a new data path, say) drops what the
    # reference serves: those packets are compared once it has them.
    ops = [op for op in ops if not _beyond(candidate, op)]
    traces = []
    for name in (REFERENCE, candidate):
        clock = FakeClock(NOW)
        datapath = new_datapath(name, capacity=capacity, clock=clock)
        datapath.apply(snapshot(frozenset({0, 1, 2}), affinity, external))
        traces.append(run(datapath, clock, ops))
    assert traces[0] == traces[1]


@needs_fast
def test_the_fast_tables_cost_at_most_64_bytes_per_flow() -> None:
    from nfqproxy._fastpath import FastCore

    assert FastCore.bytes_per_flow() <= 64


@each_candidate
def test_every_path_evicts_and_expires_the_same_flows(candidate: str) -> None:
    scripted: list[tuple[str, Any]] = []
    for sport in range(1000, 1030):
        scripted.append(
            (
                "packet",
                request(sport % 3, sport, 0, "tcp" if sport % 2 else "udp", dpkt.tcp.TH_SYN, b""),
            )
        )
        scripted.append(("packet", reply(sport % 3, sport % 3, sport, "tcp", dpkt.tcp.TH_ACK)))
    scripted += [("tick", 31.0), ("expire", None), ("apply", (frozenset({1}), 0)), ("tick", 121.0)]
    scripted += [("packet", request(0, 1001, 0, "tcp", dpkt.tcp.TH_ACK, b"")), ("expire", None)]
    traces, stats = [], []
    for name in (REFERENCE, candidate):
        clock = FakeClock(NOW)
        datapath = new_datapath(name, capacity=8, clock=clock)
        datapath.apply(snapshot(frozenset({0, 1, 2})))
        traces.append(run(datapath, clock, scripted))
        table = datapath.status()["connection_table"]
        assert isinstance(table, dict)
        stats.append((table["evicted"], table["expired"], table["by_state"], table["by_backend"]))
    assert traces[0] == traces[1]
    assert stats[0] == stats[1]
    assert stats[0][0] > 0 and stats[0][1] > 0, stats


def as_checksum_partial(packet: bytes) -> bytes:
    """packet as the kernel queues it with CHECKSUM_PARTIAL: the L4 field holds the
    uncomplemented pseudo-header sum only."""
    ip = dpkt.ip.IP(packet)
    length = len(ip.data)
    words = ip.src + ip.dst + bytes([0, ip.p]) + length.to_bytes(2, "big")
    total = sum(int.from_bytes(words[i : i + 2], "big") for i in range(0, 12, 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    at = 20 + (16 if ip.p == 6 else 6)
    return packet[:at] + total.to_bytes(2, "big") + packet[at + 2 :]


@needs_fast
@given(st.lists(st.one_of(valid_requests, valid_replies), min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_checksum_partial_packets_leave_with_complete_checksums(packets: list[bytes]) -> None:
    reference = new_datapath(REFERENCE, clock=FakeClock(NOW))
    fast = FastDatapath([IPv4Network("10.96.0.0/12")], capacity=4096, clock=FakeClock(NOW))
    for datapath in (reference, fast):
        datapath.apply(snapshot(frozenset({0, 1, 2})))
    for packet in packets:
        expected = reference.process(packet)
        action, reason, payload, _, _ = fast.core.process(as_checksum_partial(packet), NOW, True)
        assert (action, reason) == (expected.action.value, expected.reason)
        if payload is None:
            continue
        assert expected.payload is not None and checksums_verify(payload)
        at = 20 + (16 if payload[9] == 6 else 6)
        # The same bytes, but for the checksum's representation of zero (0x0000 / 0xFFFF).
        assert (
            payload[:at] + payload[at + 2 :] == expected.payload[:at] + expected.payload[at + 2 :]
        )


@needs_fast
def test_a_large_table_reports_states_from_c_and_leaves_out_the_per_backend_breakdown() -> None:
    from nfqproxy.datapath.flows import SUMMARY_DETAIL_LIMIT

    fast = FastDatapath(
        [IPv4Network("10.96.0.0/12")], capacity=SUMMARY_DETAIL_LIMIT + 100, clock=FakeClock(NOW)
    )
    fast.apply(snapshot(frozenset({0, 1})))
    template = bytearray(tcp_packet("10.0.0.1", 1, "10.96.0.10", 80))
    for i in range(SUMMARY_DETAIL_LIMIT + 50):
        template[12:16] = (0x0A000000 + (i >> 16)).to_bytes(4, "big")
        template[20:22] = (i & 0xFFFF).to_bytes(2, "big")
        fast.process(bytes(template))
    table = fast.status()["connection_table"]
    assert isinstance(table, dict)
    assert table["by_state"] == {"tcp/syn_sent": SUMMARY_DETAIL_LIMIT + 50}
    assert isinstance(table["by_backend"], str)


@each_candidate
def test_every_path_resets_flows_to_a_removed_backend_and_spares_a_draining_one(
    candidate: str,
) -> None:
    flows = [
        request(c, p, 0, "tcp", dpkt.tcp.TH_SYN, b"") for c in range(2) for p in range(1000, 1012)
    ]
    acks = [
        request(c, p, 0, "tcp", dpkt.tcp.TH_ACK, b"x") for c in range(2) for p in range(1000, 1012)
    ]
    removed = snapshot(frozenset({0, 2}))
    vip = ip_address("10.96.0.10")
    web = removed.ports[(vip, "TCP", 80)]
    draining = Snapshot(
        {
            **removed.ports,
            (vip, "TCP", 80): ServicePort(
                web.name, vip, "TCP", 80, web.backends, 0, (Backend(ip_address(BACKENDS[1]), 8080),)
            ),
        }
    )
    traces = []
    for name in (REFERENCE, candidate):
        clock = FakeClock(NOW)
        datapath = new_datapath(name, capacity=64, clock=clock)
        datapath.apply(snapshot(frozenset({0, 1, 2})))
        trace = run(
            datapath, clock, [("packets", flows), ("apply_snapshot", draining), ("packets", acks)]
        )
        trace += run(
            datapath, clock, [("apply_snapshot", removed), ("packets", acks), ("packets", acks)]
        )
        traces.append(trace)
        counters = datapath.counters
        # be2 drained first (flows kept), then left: its flows were reset, once each.
        assert counters["tcp_flow_retired"] == counters["reject_backend_removed"] > 0
    assert traces[0] == traces[1]


@each_candidate
def test_every_path_gives_a_syn_on_a_port_whose_backend_left_a_new_backend(
    candidate: str,
) -> None:
    """A SYN that meets a flow retired with its backend is a new connection (the port was
    reused, or the SYN was sent again before the handshake): it gets a new backend rather
    than a refusal, which the client would see as ECONNREFUSED from a service with
    endpoints."""
    syns = [
        request(c, p, 0, "tcp", dpkt.tcp.TH_SYN, b"") for c in range(2) for p in range(1000, 1012)
    ]
    for name in (REFERENCE, candidate):
        clock = FakeClock(NOW)
        datapath = new_datapath(name, capacity=64, clock=clock)
        datapath.apply(snapshot(frozenset({0, 1, 2})))
        for packet in syns:
            datapath.process(packet)
        datapath.apply(snapshot(frozenset({0, 2})))
        again = [datapath.process(packet) for packet in syns]
        # Flows on the surviving backends carry on; the others start afresh.
        assert {(v.action, v.reason) for v in again} == {
            (Action.ACCEPT, "new_flow"),
            (Action.ACCEPT, "request"),
        }
        assert {dpkt.ip.IP(v.payload).dst for v in again} <= {
            ip_address(BACKENDS[i]).packed for i in (0, 2)
        }
        assert datapath.counters["tcp_flow_retired"] > 0


@each_candidate
@pytest.mark.parametrize("quote", [28, 36, 48, 68])
def test_every_path_translates_icmp_errors_about_its_flows_byte_for_byte(
    candidate: str, quote: int
) -> None:
    outputs = []
    for name in (REFERENCE, candidate):
        clock = FakeClock(NOW)
        datapath = new_datapath(name, capacity=64, clock=clock)
        datapath.apply(snapshot(frozenset({0, 1, 2})))
        out = []
        for client in range(3):
            for sport in range(1000, 1006):
                for proto in ("tcp", "udp"):
                    sent = datapath.process(
                        request(client, sport, 0, proto, dpkt.tcp.TH_SYN, b"x" * 40)
                    )
                    left = sent.payload
                    assert left is not None
                    backend = ".".join(map(str, left[16:20]))
                    for source in (backend, "10.244.0.1"):
                        for icmp_type in (3, 11):
                            v = datapath.process(
                                icmp_error(source, CLIENTS[client], left, icmp_type, 4, quote)
                            )
                            out.append((v.action, v.reason, v.payload))
        outputs.append((out, dict(datapath.counters)))
    assert outputs[0] == outputs[1]
    assert outputs[0][1]["accept_icmp_error"] == 3 * 6 * 2 * 2 * 2
