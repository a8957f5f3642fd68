"""SCTP through the data paths: routed by the common header's ports like UDP, with its
CRC32c recomputed after a port change (it covers the ports, no address). Packets are
built by hand: this machine's kernel has no SCTP sockets.

Parametrised over every data path that sees every packet; one that does not proxy SCTP
yet is skipped with that reason."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest

from nfqproxy.datapath import factory
from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.verdicts import Action
from nfqproxy.model import Backend, ServicePort, Snapshot
from nfqproxy_lab.packets import (
    addr,
    addr6,
    icmp6_error,
    icmp_error,
    sctp_checksum_verifies,
    sctp_chunk,
    sctp_init_body,
    sctp_packet,
)
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import datapath_params, new_datapath

CIDRS = (IPv4Network("10.96.0.0/12"), IPv6Network("fd00:96::/108"))
FAMILIES = {
    4: ("10.96.0.30", "10.244.1.2", ["10.244.11.2", "10.244.12.2"], "10.96.0.31"),
    6: ("fd00:96::30", "fd00:244:1::2", ["fd00:244:11::2", "fd00:244:12::2"], "fd00:96::31"),
}
PORT, TARGET = 3868, 3869  # Diameter, which runs over SCTP


@pytest.fixture(params=datapath_params(every_packet_only=True))
def datapath(request: pytest.FixtureRequest) -> Datapath:
    name: str = request.param
    if 132 not in factory.DATAPATHS[name].protocols:
        pytest.skip(f"the {name} data path does not proxy SCTP yet (issue 15)")
    dp = new_datapath(name, clock=FakeClock(), service_cidrs=CIDRS)
    ports = {}
    for vip_text, _, backends, empty_text in FAMILIES.values():
        vip, empty = ip_address(vip_text), ip_address(empty_text)
        chosen = tuple(Backend(ip_address(b), TARGET) for b in backends)
        ports[(vip, "SCTP", PORT)] = ServicePort("d/diameter", vip, "SCTP", PORT, chosen)
        ports[(empty, "SCTP", PORT)] = ServicePort("d/empty", empty, "SCTP", PORT, ())
    dp.apply(Snapshot(ports))
    return dp


def fields(packet: bytes) -> tuple[bytes, bytes, bytes]:
    """(source address, destination address, SCTP packet) of an IPv4 or IPv6 packet."""
    if packet[0] >> 4 == 6:
        return packet[8:24], packet[24:40], packet[40:]
    return packet[12:16], packet[16:20], packet[20:]


@pytest.mark.parametrize("family", [4, 6])
def test_an_association_is_dnated_and_its_replies_come_from_the_vip(
    datapath: Datapath, family: int
) -> None:
    vip, client, backends, _ = FAMILIES[family]
    pack = addr if family == 4 else addr6
    init = sctp_packet(client, 5000, vip, PORT, 0, sctp_chunk(1, sctp_init_body(0xA1)))
    verdict = datapath.process(init)
    assert (verdict.action, verdict.reason) == (Action.ACCEPT, "new_flow")
    assert verdict.payload is not None
    _, dst, segment = fields(verdict.payload)
    backend = str(ip_address(dst))
    assert backend in backends and int.from_bytes(segment[2:4], "big") == TARGET
    assert sctp_checksum_verifies(segment)
    ack = sctp_packet(backend, TARGET, client, 5000, 0xA1, sctp_chunk(2, sctp_init_body(0xB2)))
    reply = datapath.process(ack)
    assert reply.reason == "reply" and reply.payload is not None
    src, _, segment = fields(reply.payload)
    assert src == pack(vip) and int.from_bytes(segment[:2], "big") == PORT
    assert sctp_checksum_verifies(segment)
    data = sctp_chunk(0, bytes(12) + b"hello", flags=3)
    later = datapath.process(sctp_packet(client, 5000, vip, PORT, 0xB2, data))
    assert later.reason == "request" and later.payload is not None
    assert str(ip_address(fields(later.payload)[1])) == backend
    table = datapath.status()["connection_table"]
    assert isinstance(table, dict) and table["by_state"] == {"sctp/replied": 1}


def test_a_corrupt_checksum_stays_corrupt_after_the_rewrite(datapath: Datapath) -> None:
    """Recomputing would launder it: the receiver must still see it as damaged."""
    vip, client, _, _ = FAMILIES[4]
    init = bytearray(sctp_packet(client, 5001, vip, PORT, 0, sctp_chunk(1, sctp_init_body(7))))
    init[-1] ^= 0x40  # a bit flipped in transit
    verdict = datapath.process(bytes(init))
    assert verdict.reason == "new_flow" and verdict.payload is not None
    assert not sctp_checksum_verifies(fields(verdict.payload)[2])


@pytest.mark.parametrize("family", [4, 6])
def test_an_sctp_port_without_endpoints_is_rejected(datapath: Datapath, family: int) -> None:
    _, client, _, empty = FAMILIES[family]
    init = sctp_packet(client, 5002, empty, PORT, 0, sctp_chunk(1, sctp_init_body(9)))
    assert datapath.process(init).action is Action.REJECT


def test_an_sctp_header_cut_short_is_dropped(datapath: Datapath) -> None:
    vip, client, _, _ = FAMILIES[4]
    packet = sctp_packet(client, 5003, vip, PORT, 0, b"")[:28]
    packet = packet[:2] + (28).to_bytes(2, "big") + packet[4:]
    verdict = datapath.process(packet)
    assert (verdict.action, verdict.reason) == (Action.DROP, "truncated_l4_header")


@pytest.mark.parametrize("family", [4, 6])
def test_an_icmp_error_about_an_association_is_translated_for_the_client(
    datapath: Datapath, family: int
) -> None:
    """Fragmentation needed / Packet Too Big from the node about an SCTP flow: the quote
    says VIP:port again, so that the client's path MTU for the VIP drops."""
    vip, client, _, _ = FAMILIES[family]
    init = sctp_packet(client, 5004, vip, PORT, 0, sctp_chunk(1, sctp_init_body(3)))
    sent = datapath.process(init).payload
    assert sent is not None
    node = "10.244.1.1" if family == 4 else "fd00:244:1::1"
    error = (
        icmp_error(node, client, sent, 3, 4, quote=len(sent))
        if family == 4
        else icmp6_error(node, client, sent, 2, 0)
    )
    verdict = datapath.process(error)
    assert (verdict.action, verdict.reason) == (Action.ACCEPT, "icmp_error")
    assert verdict.payload is not None
    quoted = verdict.payload[28:] if family == 4 else verdict.payload[48:]
    _, dst, segment = fields(quoted)
    assert dst == (addr if family == 4 else addr6)(vip)
    assert int.from_bytes(segment[2:4], "big") == PORT


def test_an_sctp_first_fragment_is_dropped_its_crc_covers_the_whole_datagram(
    datapath: Datapath,
) -> None:
    vip, client, _, _ = FAMILIES[6]
    packet = bytearray(sctp_packet(client, 5005, vip, PORT, 0, sctp_chunk(1, sctp_init_body(4))))
    # A fragment header (offset 0, more to come) between the IPv6 header and SCTP.
    fragment = bytes([132, 0, 0, 1, 0, 0, 0, 9])
    packet = packet[:6] + bytes([44]) + packet[7:40] + fragment + packet[40:]
    packet[4:6] = (len(packet) - 40).to_bytes(2, "big")
    verdict = datapath.process(bytes(packet))
    assert (verdict.action, verdict.reason) == (Action.DROP, "fragment")
