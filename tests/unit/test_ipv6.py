"""IPv6 through the data paths: DNAT and its reverse with the pseudo-header checksum,
extension headers walked with a bound, fragments, ICMPv6 errors translated.

Parametrised over every data path that sees every packet; one that does not parse IPv6
yet is skipped with that reason, and gets these scenarios once it declares the family in
the factory."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfqproxy.datapath import factory
from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.reference import ipv6
from nfqproxy.datapath.verdicts import Action
from nfqproxy.model import Backend, ServicePort, Snapshot
from nfqproxy_lab.packets import (
    addr6,
    checksums6_verify,
    checksums_verify,
    extension_header,
    fragment_header,
    icmp6_error,
    tcp6_packet,
    tcp_packet,
    udp6_packet,
    udp_packet,
)
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import datapath_params, new_datapath

CIDRS = (IPv4Network("10.96.0.0/12"), IPv6Network("fd00:96::/108"))
VIP, EMPTY_VIP = "fd00:96::10", "fd00:96::20"
CLIENT = "fd00:244:1::2"
CLIENTS6 = [CLIENT, "fd00:244:1::3"]
BACKENDS = ["fd00:244:11::2", "fd00:244:12::2", "fd00:244:13::2"]


@pytest.fixture(params=datapath_params(every_packet_only=True))
def datapath(request: pytest.FixtureRequest) -> Datapath:
    name: str = request.param
    if 6 not in factory.DATAPATHS[name].families:
        pytest.skip(f"the {name} data path does not parse IPv6 yet (issue 15)")
    dp = new_datapath(name, clock=FakeClock(), service_cidrs=CIDRS)
    vip, empty = ip_address(VIP), ip_address(EMPTY_VIP)
    backends = tuple(Backend(ip_address(b), 8080) for b in BACKENDS)
    dns = tuple(Backend(ip_address(b), 5353) for b in BACKENDS)
    dp.apply(
        Snapshot(
            {
                (vip, "TCP", 80): ServicePort("d/web:http", vip, "TCP", 80, backends),
                (vip, "UDP", 53): ServicePort("d/web:dns", vip, "UDP", 53, dns),
                (empty, "TCP", 80): ServicePort("d/empty:http", empty, "TCP", 80, ()),
            }
        )
    )
    return dp


def backend_of(payload: bytes) -> str:
    return str(ip_address(payload[24:40]))


def test_a_tcp_flow_is_dnated_to_a_backend_and_its_replies_come_from_the_vip(
    datapath: Datapath,
) -> None:
    syn = datapath.process(tcp6_packet(CLIENT, 40000, VIP, 80))
    assert (syn.action, syn.reason, syn.proxied) == (Action.ACCEPT, "new_flow", True)
    assert syn.payload is not None and checksums6_verify(syn.payload)
    backend = backend_of(syn.payload)
    assert backend in BACKENDS and int.from_bytes(syn.payload[42:44], "big") == 8080
    answer = tcp6_packet(backend, 8080, CLIENT, 40000, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
    reply = datapath.process(answer)
    assert (reply.action, reply.reason) == (Action.ACCEPT, "reply")
    assert reply.payload is not None and checksums6_verify(reply.payload)
    assert reply.payload[8:24] == addr6(VIP) and int.from_bytes(reply.payload[40:42], "big") == 80
    again = datapath.process(tcp6_packet(CLIENT, 40000, VIP, 80, dpkt.tcp.TH_ACK, b"GET /"))
    assert again.reason == "request" and again.payload is not None
    assert backend_of(again.payload) == backend and checksums6_verify(again.payload)


def test_udp_flows_spread_over_the_backends(datapath: Datapath) -> None:
    chosen = set()
    for sport in range(2000, 2060):
        verdict = datapath.process(udp6_packet(CLIENT, sport, VIP, 53))
        assert verdict.reason == "new_flow" and verdict.payload is not None
        assert checksums6_verify(verdict.payload)
        chosen.add(backend_of(verdict.payload))
    assert chosen == set(BACKENDS)


def test_no_endpoints_and_no_service_are_rejected(datapath: Datapath) -> None:
    assert datapath.process(tcp6_packet(CLIENT, 1, EMPTY_VIP, 80)).action is Action.REJECT
    unknown = datapath.process(udp6_packet(CLIENT, 1, "fd00:96::99", 53))
    assert (unknown.action, unknown.reason) == (Action.REJECT, "no_service")


def test_extension_headers_are_walked_to_the_ports(datapath: Datapath) -> None:
    chain = extension_header(60) + extension_header(6, 1)  # hop-by-hop, destination options
    verdict = datapath.process(tcp6_packet(CLIENT, 40001, VIP, 80, extensions=chain, first=0))
    assert verdict.reason == "new_flow" and verdict.payload is not None
    assert verdict.payload[40 : 40 + len(chain)] == chain
    assert int.from_bytes(verdict.payload[40 + len(chain) + 2 :][:2], "big") == 8080
    assert datapath.counters["ip_options"] == 1


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (ipv6.MAX_EXTENSION_HEADERS + 1, "bad_extension_headers"),
        (ipv6.MAX_EXTENSION_HEADERS, "new_flow"),
    ],
)
def test_a_chain_of_extension_headers_is_walked_up_to_its_bound(
    datapath: Datapath, headers: int, reason: str
) -> None:
    chain = b"".join(extension_header(60) for _ in range(headers - 1)) + extension_header(17)
    packet = udp6_packet(CLIENT, 3000, VIP, 53, extensions=chain, first=60)
    assert datapath.process(packet).reason == reason


@pytest.mark.parametrize(
    "chain",
    [
        extension_header(60)[:-8] + bytes([60, 5]),  # says 48 bytes, the packet ends first
        bytes([60, 0, 1, 4, 0, 0]),  # shorter than any extension header
    ],
    ids=["length-past-the-end", "cut-short"],
)
def test_a_malformed_extension_header_chain_is_dropped_with_a_counter(
    datapath: Datapath, chain: bytes
) -> None:
    packet = udp6_packet(CLIENT, 3000, VIP, 53, extensions=chain, first=0)[: 40 + len(chain)]
    packet = packet[:4] + len(chain).to_bytes(2, "big") + packet[6:]
    verdict = datapath.process(packet)
    assert (verdict.action, verdict.reason) == (Action.DROP, "bad_extension_headers")


def test_a_first_fragment_is_decided_by_its_ports_and_a_later_one_is_dropped_and_counted(
    datapath: Datapath,
) -> None:
    first = udp6_packet(CLIENT, 4000, VIP, 53, b"x" * 64, fragment_header(17, 0, True), first=44)
    # The UDP length counts the whole datagram; this fragment holds part of it.
    first = first[:52] + (8 + 64 + 400).to_bytes(2, "big") + first[54:]
    decided = datapath.process(first)
    assert decided.reason == "new_flow" and decided.payload is not None
    assert backend_of(decided.payload) in BACKENDS
    later = udp6_packet(CLIENT, 4000, VIP, 53, b"y" * 64, fragment_header(17, 9, False), first=44)
    verdict = datapath.process(later)
    assert (verdict.action, verdict.reason) == (Action.DROP, "fragment")
    assert datapath.counters["drop_fragment"] == 1


@pytest.mark.parametrize(("icmp_type", "code"), [(2, 0), (1, 4), (3, 0)])
def test_icmpv6_errors_about_a_flow_are_translated_for_the_client(
    datapath: Datapath, icmp_type: int, code: int
) -> None:
    """Packet Too Big (PMTU through the VIP), port unreachable, time exceeded: the quoted
    packet says VIP:port again, the error comes from the VIP, the checksum holds."""
    syn = datapath.process(tcp6_packet(CLIENT, 40002, VIP, 80, payload=b"z" * 100))
    assert syn.payload is not None
    backend = backend_of(syn.payload)
    error = icmp6_error(backend, CLIENT, syn.payload, icmp_type, code)
    verdict = datapath.process(error)
    assert (verdict.action, verdict.reason) == (Action.ACCEPT, "icmp_error")
    out = verdict.payload
    assert out is not None and checksums6_verify(out)
    assert out[8:24] == addr6(VIP)  # from the VIP, as the client expects
    quoted = out[48:]
    assert quoted[24:40] == addr6(VIP) and int.from_bytes(quoted[42:44], "big") == 80
    # The quoted TCP checksum still matches the quoted packet as the client sent it.
    assert checksums6_verify(quoted)


def test_an_icmpv6_error_about_no_flow_or_not_an_error_is_dropped(datapath: Datapath) -> None:
    stray = icmp6_error(BACKENDS[0], CLIENT, tcp6_packet(CLIENT, 9, BACKENDS[0], 8080), 2, 0)
    assert datapath.process(stray).reason == "icmp_unknown_flow"
    echo = icmp6_error(BACKENDS[0], CLIENT, b"ping", 128, 0)
    assert datapath.process(echo).reason == "unsupported_protocol"


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (tcp6_packet(CLIENT, 1, VIP, 80)[:39], "truncated_ip_header"),
        (tcp6_packet(CLIENT, 1, VIP, 80)[:50], "bad_total_length"),
        (bytes([0x60, 0, 0, 0, 0, 0, 6, 64]) + bytes(32), "bad_total_length"),  # jumbogram
        (
            tcp6_packet(CLIENT, 1, VIP, 80)[:4]
            + b"\x00\x08"
            + tcp6_packet(CLIENT, 1, VIP, 80)[6:48],
            "truncated_l4_header",
        ),
    ],
    ids=["header-cut", "payload-length-past-the-end", "zero-payload-length", "tcp-cut"],
)
def test_malformed_ipv6_packets_are_dropped_with_named_counters(
    datapath: Datapath, packet: bytes, reason: str
) -> None:
    verdict = datapath.process(packet)
    assert (verdict.action, verdict.reason) == (Action.DROP, reason)


@st.composite
def extension_chains(draw: st.DrawFn) -> bytes:
    """An IPv6 packet to the VIP with a random chain of extension headers, some of them
    lying about their length or type, then TCP or UDP, possibly cut short."""
    upper = draw(st.sampled_from([6, 17]))
    kinds = draw(st.lists(st.sampled_from([0, 43, 44, 51, 60, 59, 6, 17]), max_size=12))
    chain, next_types = b"", [*kinds[1:], upper]
    for kind, following in zip(kinds, next_types, strict=False):
        if kind == 44:
            chain += fragment_header(following, draw(st.integers(0, 8191)), draw(st.booleans()))
        elif kind == 51:
            units = draw(st.integers(1, 4))
            chain += bytes([following, units]) + bytes((units + 2) * 4 - 2)
        else:
            chain += extension_header(following, draw(st.integers(0, 3)))
    sport = draw(st.integers(1, 65535))
    if upper == 6:
        packet = tcp6_packet(
            CLIENT, sport, VIP, 80, extensions=chain, first=kinds[0] if kinds else 0
        )
    else:
        packet = udp6_packet(
            CLIENT, sport, VIP, 53, extensions=chain, first=kinds[0] if kinds else 0
        )
    mutated = bytearray(packet)
    for _ in range(draw(st.integers(0, 3))):
        mutated[draw(st.integers(0, len(mutated) - 1))] = draw(st.integers(0, 255))
    return bytes(mutated[: draw(st.integers(0, len(mutated)))])


@pytest.mark.parametrize("name", datapath_params(every_packet_only=True))
@given(packets=st.lists(extension_chains(), max_size=20))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_extension_header_chain_gets_a_named_verdict_and_sound_checksums(
    name: str, packets: list[bytes]
) -> None:
    """No packet crashes the data path (internal_error), and every packet it rewrites
    leaves with a right checksum."""
    if 6 not in factory.DATAPATHS[name].families:
        pytest.skip(f"the {name} data path does not parse IPv6 yet (issue 15)")
    dp = new_datapath(name, clock=FakeClock(), service_cidrs=CIDRS)
    vip = ip_address(VIP)
    backends = tuple(Backend(ip_address(b), 8080) for b in BACKENDS)
    dp.apply(Snapshot({(vip, "TCP", 80): ServicePort("d/web:http", vip, "TCP", 80, backends)}))
    for packet in packets:
        verdict = dp.process(packet)
        assert verdict.reason != "internal_error", packet.hex()
        if verdict.payload is not None and packet[6] in (6, 17) and len(packet) >= 40:
            # No extension headers: the checksum can be verified whole.
            assert checksums6_verify(verdict.payload) == checksums6_verify(packet), packet.hex()


V4_VIP, V4_CLIENTS = "10.96.0.10", ["10.244.1.2", "10.244.1.3"]
V4_BACKENDS = ["10.244.11.2", "10.244.12.2", "10.244.13.2"]
flow_steps = st.lists(
    st.tuples(
        st.sampled_from([4, 6]),  # family
        st.integers(0, 1),  # client
        st.integers(30000, 30005),  # client port
        st.sampled_from(["request", "reply"]),
        st.sampled_from([6, 17]),
    ),
    max_size=60,
)


@pytest.mark.parametrize("name", datapath_params(every_packet_only=True))
@given(steps=flow_steps)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_flows_of_both_families_keep_their_backend_and_answer_from_their_vip(
    name: str, steps: list[tuple[int, int, int, str, int]]
) -> None:
    """A dual-stack service's flows, interleaved at random: each flow's packets go to one
    backend of its own family, each reply leaves from its VIP:port, every checksum holds."""
    if 6 not in factory.DATAPATHS[name].families:
        pytest.skip(f"the {name} data path does not parse IPv6 yet (issue 15)")
    dp = new_datapath(name, clock=FakeClock(), service_cidrs=CIDRS)
    ports = {}
    for vip_text, backends in ((V4_VIP, V4_BACKENDS), (VIP, BACKENDS)):
        address = ip_address(vip_text)
        for protocol, port, target in (("TCP", 80, 8080), ("UDP", 53, 5353)):
            chosen = tuple(Backend(ip_address(b), target) for b in backends)
            ports[(address, protocol, port)] = ServicePort(
                f"d/web:{port}", address, protocol, port, chosen
            )
    dp.apply(Snapshot(ports))
    backend_of_flow: dict[tuple[int, int, int, int], tuple[str, int]] = {}
    for family, client_index, sport, kind, proto in steps:
        vip = VIP if family == 6 else V4_VIP
        client = (CLIENTS6 if family == 6 else V4_CLIENTS)[client_index]
        port = 80 if proto == 6 else 53
        flow = (family, client_index, sport, proto)
        tcp, udp = (tcp6_packet, udp6_packet) if family == 6 else (tcp_packet, udp_packet)
        if kind == "request" or flow not in backend_of_flow:
            packet = tcp(client, sport, vip, port) if proto == 6 else udp(client, sport, vip, port)
            verdict = dp.process(packet)
            assert verdict.action is Action.ACCEPT and verdict.payload is not None
            out = verdict.payload
            backend = str(ip_address(out[24:40] if family == 6 else out[16:20]))
            assert backend in (BACKENDS if family == 6 else V4_BACKENDS)
            assert backend_of_flow.setdefault(flow, (backend, 0))[0] == backend
        else:
            backend = backend_of_flow[flow][0]
            target = 8080 if proto == 6 else 5353
            flags = dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
            packet = (
                tcp(backend, target, client, sport, flags)
                if proto == 6
                else udp(backend, target, client, sport)
            )
            verdict = dp.process(packet)
            assert verdict.reason == "reply" and verdict.payload is not None
            out = verdict.payload
            source = out[8:24] if family == 6 else out[12:16]
            l4 = 40 if family == 6 else 20
            assert str(ip_address(source)) == vip
            assert int.from_bytes(out[l4 : l4 + 2], "big") == port
        assert (checksums6_verify if family == 6 else checksums_verify)(out)
