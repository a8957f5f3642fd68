"""Every data path, packet in, verdict and packet out, with no kernel involved: the
scenarios the reference path was written against, run on each implementation through the
datapath and make_datapath fixtures (tests/unit/conftest.py)."""

from dataclasses import replace
from ipaddress import ip_address

import dpkt
import pytest

from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.verdicts import Action, Verdict
from nfqproxy.model import Backend, ServicePort, Snapshot
from nfqproxy_lab.packets import (
    addr,
    checksums_verify,
    icmp_checksums_verify,
    icmp_error,
    tcp_packet,
    udp_packet,
)
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import MakeDatapath, flow_count, status_section

VIP = "10.96.0.10"
CLIENT = "10.244.1.2"
BACKENDS = ["10.244.11.2", "10.244.12.2", "10.244.13.2"]


def payload_of(verdict: Verdict) -> bytes:
    assert verdict.payload is not None, verdict
    return verdict.payload


def snapshot(backend_ips: list[str], vip: str = VIP) -> Snapshot:
    web = tuple(Backend(ip_address(b), 8080) for b in backend_ips)
    dns = tuple(Backend(ip_address(b), 5353) for b in backend_ips)
    return Snapshot(
        {
            (ip_address(vip), "TCP", 80): ServicePort(
                "default/web:http", ip_address(vip), "TCP", 80, web
            ),
            (ip_address(vip), "UDP", 53): ServicePort(
                "default/web:dns", ip_address(vip), "UDP", 53, dns
            ),
            (ip_address("10.96.0.20"), "TCP", 80): ServicePort(
                "default/empty:http", ip_address("10.96.0.20"), "TCP", 80, ()
            ),
        }
    )


@pytest.fixture
def datapath(datapath: Datapath) -> Datapath:
    """Each data path in turn, on the test's clock, with web and empty programmed."""
    datapath.apply(snapshot(BACKENDS))
    return datapath


def test_a_new_tcp_flow_is_rewritten_to_a_backend_with_valid_checksums(
    datapath: Datapath,
) -> None:
    verdict = datapath.process(tcp_packet(CLIENT, 40000, VIP, 80))
    assert verdict.action is Action.ACCEPT and verdict.reason == "new_flow" and verdict.proxied
    assert verdict.payload is not None
    out = dpkt.ip.IP(verdict.payload)
    assert out.src == addr(CLIENT) and out.data.sport == 40000
    assert out.dst in {addr(b) for b in BACKENDS} and out.data.dport == 8080
    assert checksums_verify(payload_of(verdict))


def test_every_packet_of_a_flow_goes_to_the_same_backend_and_replies_come_from_the_vip(
    datapath: Datapath,
) -> None:
    first = dpkt.ip.IP(datapath.process(tcp_packet(CLIENT, 40001, VIP, 80)).payload)
    backend = first.dst
    for _ in range(3):
        again = datapath.process(tcp_packet(CLIENT, 40001, VIP, 80, flags=dpkt.tcp.TH_ACK))
        assert again.reason == "request"
        assert dpkt.ip.IP(again.payload).dst == backend
    reply_raw = tcp_packet(
        ".".join(map(str, backend)), 8080, CLIENT, 40001, flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    )
    reply = datapath.process(reply_raw)
    assert reply.action is Action.ACCEPT and reply.reason == "reply" and not reply.proxied
    out = dpkt.ip.IP(reply.payload)
    assert (out.src, out.data.sport) == (addr(VIP), 80)
    assert checksums_verify(payload_of(reply))


def test_udp_is_rewritten_and_a_zero_checksum_stays_zero(datapath: Datapath) -> None:
    raw = udp_packet(CLIENT, 5000, VIP, 53)
    verdict = datapath.process(raw)
    assert checksums_verify(payload_of(verdict))
    assert dpkt.ip.IP(verdict.payload).data.dport == 5353
    no_checksum = bytearray(udp_packet(CLIENT, 5001, VIP, 53))
    no_checksum[26:28] = b"\x00\x00"
    assert dpkt.ip.IP(datapath.process(bytes(no_checksum)).payload).data.sum == 0


def test_a_service_without_endpoints_and_an_unserved_port_are_rejected(
    datapath: Datapath,
) -> None:
    assert datapath.process(tcp_packet(CLIENT, 1, "10.96.0.20", 80)).reason == "no_endpoints"
    unserved = datapath.process(tcp_packet(CLIENT, 1, VIP, 443))
    assert (unserved.action, unserved.reason) == (Action.REJECT, "port_not_served")
    assert datapath.process(udp_packet(CLIENT, 1, "10.96.5.5", 53)).reason == "no_service"


def test_an_unknown_reply_is_recovered_when_one_service_port_uses_that_backend(
    make_datapath: MakeDatapath,
) -> None:
    dp = make_datapath()
    dp.apply(snapshot(BACKENDS))
    verdict = dp.process(tcp_packet(BACKENDS[0], 8080, CLIENT, 40002, flags=dpkt.tcp.TH_ACK))
    assert verdict.reason == "reply_recovered"
    assert dpkt.ip.IP(verdict.payload).src == addr(VIP)
    stray = dp.process(tcp_packet("10.244.99.2", 8080, CLIENT, 40002, flags=dpkt.tcp.TH_ACK))
    assert (stray.action, stray.reason) == (Action.DROP, "unknown_reply")


def test_removing_an_endpoint_resets_its_tcp_flows_and_resteers_udp_flows(
    datapath: Datapath,
) -> None:
    tcp_backend = dpkt.ip.IP(datapath.process(tcp_packet(CLIENT, 40003, VIP, 80)).payload).dst
    survivor_port = next(
        port
        for port in range(41000, 41100)
        if dpkt.ip.IP(datapath.process(tcp_packet(CLIENT, port, VIP, 80)).payload).dst
        != tcp_backend
    )
    udp_flows = {}
    for port in range(6000, 6030):
        udp_flows[port] = dpkt.ip.IP(
            datapath.process(udp_packet(CLIENT, port, VIP, 53)).payload
        ).dst
    gone = ".".join(map(str, tcp_backend))
    datapath.apply(snapshot([b for b in BACKENDS if b != gone]))
    ack = dpkt.tcp.TH_ACK
    reset = datapath.process(tcp_packet(CLIENT, 40003, VIP, 80, flags=ack))
    assert (reset.action, reset.reason) == (Action.REJECT, "backend_removed")  # the kernel RSTs
    assert datapath.process(tcp_packet(CLIENT, survivor_port, VIP, 80, flags=ack)).reason == (
        "request"
    )
    assert datapath.counters["tcp_flow_retired"] >= 1
    for port, old in udp_flows.items():
        new = dpkt.ip.IP(datapath.process(udp_packet(CLIENT, port, VIP, 53)).payload).dst
        assert new != addr(gone)
        if old != addr(gone):
            assert new == old


def test_a_draining_endpoint_keeps_its_open_tcp_flows_but_gets_no_new_ones(
    datapath: Datapath,
) -> None:
    packet = datapath.process(tcp_packet(CLIENT, 40005, VIP, 80))
    pinned = ".".join(map(str, dpkt.ip.IP(packet.payload).dst))
    draining = snapshot([b for b in BACKENDS if b != pinned])
    port_key = (ip_address(VIP), "TCP", 80)
    web = draining.ports[port_key]
    ports = dict(draining.ports)
    ports[port_key] = replace(web, draining=(Backend(ip_address(pinned), 8080),))
    datapath.apply(Snapshot(ports))
    still = datapath.process(tcp_packet(CLIENT, 40005, VIP, 80, flags=dpkt.tcp.TH_ACK))
    assert ".".join(map(str, dpkt.ip.IP(still.payload).dst)) == pinned
    for port in range(42000, 42030):
        new = datapath.process(tcp_packet(CLIENT, port, VIP, 80))
        assert ".".join(map(str, dpkt.ip.IP(new.payload).dst)) != pinned


def test_flows_expire_by_state(datapath: Datapath, clock: FakeClock) -> None:
    datapath.process(tcp_packet(CLIENT, 40004, VIP, 80))  # SYN only
    datapath.process(udp_packet(CLIENT, 7000, VIP, 53))
    assert flow_count(datapath) == 2
    clock.advance(31)  # past UDP's unreplied timeout, within TCP SYN_SENT's
    assert datapath.expire() == 1
    clock.advance(120)
    assert datapath.expire() == 1 and flow_count(datapath) == 0


def test_a_full_table_evicts_the_oldest_flow(make_datapath: MakeDatapath) -> None:
    dp = make_datapath(capacity=10)
    dp.apply(snapshot(BACKENDS))
    for port in range(20000, 20050):
        assert dp.process(tcp_packet(CLIENT, port, VIP, 80)).action is Action.ACCEPT
    assert flow_count(dp) == 10 and status_section(dp, "connection_table")["evicted"] == 40


def test_only_changed_service_ports_are_rebuilt(datapath: Datapath) -> None:
    assert datapath.apply(snapshot(BACKENDS)) == []
    changed = datapath.apply(snapshot(BACKENDS[:2]))
    assert sorted(changed) == ["default/web:dns", "default/web:http"]


MALFORMED: dict[str, bytes | bytearray] = {
    "truncated_ip_header": bytes.fromhex("4500003c0000"),
    "bad_ihl": bytes.fromhex("43000028000000004006") + bytes(30),
    "bad_total_length": bytearray(tcp_packet(CLIENT, 1, VIP, 80)),
    "truncated_l4_header": bytes(
        dpkt.ip.IP(src=addr(CLIENT), dst=addr(VIP), p=6, data=b"\x00" * 8)
    ),
    "not_ip": bytes.fromhex("50000000") + bytes(36),
    "unsupported_protocol": bytes(
        dpkt.ip.IP(src=addr(CLIENT), dst=addr(VIP), p=1, data=b"\x08\x00" + bytes(6))
    ),
}
_lying_length = bytearray(MALFORMED["bad_total_length"])
_lying_length[2:4] = (9000).to_bytes(2, "big")
MALFORMED["bad_total_length"] = _lying_length


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_a_malformed_packet_is_dropped_with_a_named_counter(
    datapath: Datapath, reason: str
) -> None:
    verdict = datapath.process(bytes(MALFORMED[reason]))
    assert (verdict.action, verdict.reason) == (Action.DROP, reason)
    assert datapath.counters[f"drop_{reason}"] == 1


def test_a_fragment_is_dropped_and_ip_options_are_proxied(datapath: Datapath) -> None:
    fragment = dpkt.ip.IP(tcp_packet(CLIENT, 1, VIP, 80))
    fragment.mf = 1
    fragment.sum = 0
    assert datapath.process(bytes(fragment)).reason == "fragment"
    with_options = tcp_packet(CLIENT, 40005, VIP, 80, ip_options=b"\x01\x01\x01\x00")
    verdict = datapath.process(with_options)
    assert verdict.action is Action.ACCEPT and checksums_verify(payload_of(verdict))
    assert datapath.counters["ip_options"] == 1


def test_a_failed_apply_leaves_every_table_as_it_was(datapath: Datapath) -> None:
    before = datapath.process(tcp_packet(CLIENT, 40100, VIP, 80))
    huge = tuple(Backend(ip_address(0x0A000000 + i), 80) for i in range(70_000))
    vip = ip_address(VIP)
    broken = Snapshot(
        {
            (vip, "TCP", 80): ServicePort("default/web:http", vip, "TCP", 80, huge),
            (ip_address("10.96.0.30"), "TCP", 80): ServicePort(
                "default/new:http", ip_address("10.96.0.30"), "TCP", 80, huge[:1]
            ),
        }
    )
    with pytest.raises(ValueError, match="at most"):
        datapath.apply(broken)
    assert datapath.process(tcp_packet(CLIENT, 1, "10.96.0.30", 80)).reason == "no_service"
    again = datapath.process(tcp_packet(CLIENT, 40101, VIP, 80))
    assert again.action is Action.ACCEPT and before.action is Action.ACCEPT
    assert datapath.status()["service_ports"] == 3


def test_tcp_options_cut_short_by_the_total_length_count_as_a_truncated_header(
    datapath: Datapath,
) -> None:
    raw = bytearray(tcp_packet(CLIENT, 40200, VIP, 80))
    raw[32] = 0xF0  # data offset 60 bytes, but the segment has 20
    assert datapath.process(bytes(raw)).reason == "truncated_l4_header"


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("quote", [28, 48])
def test_an_icmp_error_about_a_proxied_flow_reaches_the_client_as_from_the_vip(
    datapath: Datapath, proto: str, quote: int
) -> None:
    if proto == "tcp":
        request = datapath.process(tcp_packet(CLIENT, 40010, VIP, 80, payload=b"x" * 40))
        port = 80
    else:
        request = datapath.process(udp_packet(CLIENT, 40010, VIP, 53, b"q" * 40))
        port = 53
    left = payload_of(request)  # client -> backend, as the node sends it on
    backend = ".".join(map(str, dpkt.ip.IP(left).dst))
    error = datapath.process(icmp_error(backend, CLIENT, left, 3, 3, quote))
    assert (error.action, error.reason) == (Action.ACCEPT, "icmp_error")
    out = payload_of(error)
    assert icmp_checksums_verify(out)
    assert out[12:16] == addr(VIP)  # outer source: the backend became the VIP
    inner = dpkt.ip.IP(out[28:48] + b"\x00" * 8)  # the quoted header, as the client sent it
    assert inner.src == addr(CLIENT) and inner.dst == addr(VIP)
    assert int.from_bytes(out[50:52], "big") == port
    # From the node (fragmentation needed): the outer source stays the node's.
    from_node = datapath.process(icmp_error("10.244.0.1", CLIENT, left, 3, 4, quote))
    assert payload_of(from_node)[12:16] == addr("10.244.0.1")
    assert icmp_checksums_verify(payload_of(from_node))


def test_icmp_errors_about_unknown_flows_or_with_bad_quotes_are_dropped(
    datapath: Datapath,
) -> None:
    stranger = udp_packet(CLIENT, 1, "10.244.99.9", 5353)
    assert datapath.process(icmp_error("10.244.99.9", CLIENT, stranger)).reason == (
        "icmp_unknown_flow"
    )
    assert datapath.process(icmp_error("10.244.99.9", CLIENT, b"\x45" + b"\x00" * 10)).reason == (
        "icmp_bad_inner_header"
    )
    echo = icmp_error(CLIENT, "10.244.99.9", stranger, icmp_type=8, code=0)
    assert datapath.process(echo).reason == "unsupported_protocol"
