"""TCP/UDP over IPv4 or IPv6: parsing, and address rewriting on the packet's own bytes.

parse() either returns a packet the proxy can rewrite (or an ICMP error about one, in
reference/icmp.py) or names the reason it cannot; it never raises on any byte string.
rewrite_destination() and rewrite_source() change one address and port and patch the
checksums incrementally (RFC 1624): IPv4's header checksum, and the TCP/UDP checksum, whose
pseudo-header covers the addresses in both families. IPv6 has no header checksum.

SCTP is routed by its common header's ports like UDP. Its CRC32c (RFC 9260) covers the
ports but no address, and cannot be patched incrementally: a port change recomputes it
over the SCTP packet; an address change leaves it alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import google_crc32c

from nfqproxy.datapath.reference import ipv6
from nfqproxy.datapath.reference.checksum import checksum_replace
from nfqproxy.datapath.reference.icmp import IcmpError, parse_icmp6_error, parse_icmp_error
from nfqproxy.datapath.reference.reasons import Reason

IPV4_MIN_HEADER = 20
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP = 6, 17, 1, 58, 132
SCTP_COMMON_HEADER = 12  # ports, verification tag, checksum

__all__ = ["IcmpError", "ParsedPacket", "Reason", "parse", "rewrite_destination", "rewrite_source"]


@dataclass(slots=True)
class ParsedPacket:
    """A TCP, UDP or SCTP packet: its bytes up to the IP length, and its fields, read once
    (every packet's lookups use them several times)."""

    raw: bytes
    version: int  # 4 or 6
    proto: int  # IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP
    l4: int  # offset of the TCP/UDP/SCTP header
    has_ip_options: bool  # IPv4 options, or IPv6 extension headers
    src: bytes
    dst: bytes
    sport: int
    dport: int
    tcp_flags: int

    @property
    def _address(self) -> tuple[int, int]:  # (offset of the source, address length)
        return (12, 4) if self.version == 4 else (8, 16)


def parse(raw: bytes) -> ParsedPacket | IcmpError | str:
    """The parsed packet, or a Reason value saying why it cannot be proxied."""
    if len(raw) < IPV4_MIN_HEADER:  # the smaller header: too short for either family
        return Reason.TRUNCATED_IP
    version = raw[0] >> 4
    if version == 6:
        return _parse6(raw)
    if version != 4:
        return Reason.NOT_IP
    return _parse4(raw)


def _parse4(raw: bytes) -> ParsedPacket | IcmpError | str:
    ihl = raw[0] & 0x0F
    if ihl < 5:
        return Reason.BAD_IHL
    if ihl * 4 > len(raw):
        return Reason.TRUNCATED_IP
    total_length = int.from_bytes(raw[2:4], "big")
    if total_length < ihl * 4 or total_length > len(raw):
        return Reason.BAD_LENGTH
    if int.from_bytes(raw[6:8], "big") & 0x3FFF:  # more fragments, or an offset
        # With conntrack loaded the kernel reassembles before our hooks; a fragment here
        # has no ports to route by.
        return Reason.FRAGMENT
    hl, proto = ihl * 4, raw[9]
    if proto == IPPROTO_ICMP:
        return parse_icmp_error(raw, hl, total_length)
    return _l4(raw[:total_length], 4, proto, hl, ihl > 5)


def _parse6(raw: bytes) -> ParsedPacket | IcmpError | str:
    header = ipv6.walk(raw)
    if isinstance(header, str):
        return header
    if header.later_fragment:
        # The kernel reassembles IPv6 before the raw table when conntrack is loaded (it is
        # with our hooks), so this is rare: a later fragment has no ports. Counted, dropped.
        return Reason.FRAGMENT
    if header.proto == IPPROTO_ICMPV6:
        return parse_icmp6_error(raw, header.l4, header.total)
    return _l4(
        raw[: header.total],
        6,
        header.proto,
        header.l4,
        header.extensions > 0,
        first_fragment=header.first_fragment,
    )


def _l4(
    raw: bytes, version: int, proto: int, l4: int, options: bool, first_fragment: bool = False
) -> ParsedPacket | str:
    """The TCP, UDP or SCTP header at l4 checked against the IP length. A first fragment
    holds only part of the datagram UDP's length counts, and is decided by its ports."""
    if proto not in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP):
        return Reason.UNSUPPORTED_PROTOCOL
    l4_length = len(raw) - l4
    if proto == IPPROTO_SCTP:
        if first_fragment:
            # Its CRC32c covers the whole datagram and cannot be recomputed from a part.
            return Reason.FRAGMENT
        if l4_length < SCTP_COMMON_HEADER:
            return Reason.TRUNCATED_L4
    elif proto == IPPROTO_UDP:
        if l4_length < 8:
            return Reason.TRUNCATED_L4
        ulen = int.from_bytes(raw[l4 + 4 : l4 + 6], "big")
        if ulen < 8 or (ulen > l4_length and not first_fragment):
            return Reason.TRUNCATED_L4
    elif l4_length < 20 or (raw[l4 + 12] >> 4) * 4 > l4_length or raw[l4 + 12] >> 4 < 5:
        return Reason.TRUNCATED_L4  # options cut short, or a data offset below the header
    at, size = (12, 4) if version == 4 else (8, 16)
    return ParsedPacket(
        raw,
        version,
        proto,
        l4,
        options,
        raw[at : at + size],
        raw[at + size : at + 2 * size],
        int.from_bytes(raw[l4 : l4 + 2], "big"),
        int.from_bytes(raw[l4 + 2 : l4 + 4], "big"),
        raw[l4 + 13] if proto == IPPROTO_TCP else 0,
    )


def _rewrite(packet: ParsedPacket, address: bytes, port: int, destination: bool) -> bytes:
    pkt = bytearray(packet.raw)
    at, size = packet._address
    if destination:
        at += size
    port_at = packet.l4 + (2 if destination else 0)
    old_address, old_port = bytes(pkt[at : at + size]), bytes(pkt[port_at : port_at + 2])
    new_port = port.to_bytes(2, "big")
    if packet.version == 4:
        pkt[10:12] = checksum_replace(
            int.from_bytes(pkt[10:12], "big"), old_address, address
        ).to_bytes(2, "big")
    if packet.proto == IPPROTO_SCTP:
        pkt[at : at + size] = address
        if pkt[port_at : port_at + 2] != new_port:
            error = _sctp_checksum_error(pkt, packet.l4)
            pkt[port_at : port_at + 2] = new_port
            _set_sctp_checksum(pkt, packet.l4, error)
        return bytes(pkt)
    # The TCP/UDP checksum covers the pseudo-header's addresses as well as the port.
    sum_at = packet.l4 + (16 if packet.proto == IPPROTO_TCP else 6)
    old_sum = int.from_bytes(pkt[sum_at : sum_at + 2], "big")
    if packet.proto == IPPROTO_TCP or old_sum != 0:  # UDP over IPv4: 0 means "none"
        new_sum = checksum_replace(old_sum, old_address + old_port, address + new_port)
        if packet.proto == IPPROTO_UDP and new_sum == 0:
            new_sum = 0xFFFF  # RFC 768: a computed zero is sent as all ones
        pkt[sum_at : sum_at + 2] = new_sum.to_bytes(2, "big")
    pkt[at : at + size] = address
    pkt[port_at : port_at + 2] = new_port
    return bytes(pkt)


def _sctp_crc(pkt: bytearray, l4: int) -> int:
    """CRC32c over the SCTP packet with its checksum field taken as zero."""
    return int(google_crc32c.value(bytes(pkt[l4 : l4 + 8]) + bytes(4) + bytes(pkt[l4 + 12 :])))


def _sctp_checksum_error(pkt: bytearray, l4: int) -> int:
    """How far the checksum field is from right: 0 for a sound packet. Linux stores the
    CRC's little-endian bytes."""
    return int.from_bytes(pkt[l4 + 8 : l4 + 12], "little") ^ _sctp_crc(pkt, l4)


def _set_sctp_checksum(pkt: bytearray, l4: int, error: int) -> None:
    """The new CRC, off by the same error as before: a corrupt packet stays corrupt, as an
    incremental update would leave it, and the receiver still drops it."""
    pkt[l4 + 8 : l4 + 12] = (_sctp_crc(pkt, l4) ^ error).to_bytes(4, "little")


def rewrite_destination(packet: ParsedPacket, address: bytes, port: int) -> bytes:
    """DNAT: the packet bytes with destination address:port replaced."""
    return _rewrite(packet, address, port, destination=True)


def rewrite_source(packet: ParsedPacket, address: bytes, port: int) -> bytes:
    """Reverse NAT on replies: the packet bytes with source address:port replaced."""
    return _rewrite(packet, address, port, destination=False)
