"""IPv4 TCP/UDP parsing and address rewriting, on dpkt's declarative header layouts.

parse() either returns a packet the proxy can rewrite or names the reason it cannot; it
never raises on any byte string. rewrite_destination() and rewrite_source() change one
address and port and patch both checksums incrementally.
"""

from __future__ import annotations

from dataclasses import dataclass

import dpkt

from nfqproxy.datapath.checksum import checksum_replace

IPV4_MIN_HEADER = 20


class Reason:
    """Why a packet cannot be proxied. The values are the names of drop counters."""

    TRUNCATED_IP = "truncated_ip_header"
    BAD_IHL = "bad_ihl"
    BAD_LENGTH = "bad_total_length"
    NOT_IPV4 = "not_ipv4"
    FRAGMENT = "fragment"
    TRUNCATED_L4 = "truncated_l4_header"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"


@dataclass(slots=True)
class ParsedPacket:
    ip: dpkt.ip.IP
    l4: dpkt.tcp.TCP | dpkt.udp.UDP
    has_ip_options: bool

    @property
    def proto(self) -> int:
        return int(self.ip.p)

    @property
    def tcp_flags(self) -> int:
        return int(self.l4.flags) if isinstance(self.l4, dpkt.tcp.TCP) else 0


def parse(raw: bytes) -> ParsedPacket | str:
    """The parsed packet, or a Reason value saying why it cannot be proxied."""
    if len(raw) < IPV4_MIN_HEADER:
        return Reason.TRUNCATED_IP
    version, ihl = raw[0] >> 4, raw[0] & 0x0F
    if version != 4:
        return Reason.NOT_IPV4
    if ihl < 5:
        return Reason.BAD_IHL
    if ihl * 4 > len(raw):
        return Reason.TRUNCATED_IP
    total_length = int.from_bytes(raw[2:4], "big")
    if total_length < ihl * 4 or total_length > len(raw):
        return Reason.BAD_LENGTH
    try:
        ip = dpkt.ip.IP(raw)
    except (dpkt.Error, ValueError):
        return Reason.TRUNCATED_IP
    if ip.mf or ip.offset:
        # With conntrack loaded the kernel reassembles before our hooks; a fragment here
        # has no ports to route by.
        return Reason.FRAGMENT
    if ip.p not in (dpkt.ip.IP_PROTO_TCP, dpkt.ip.IP_PROTO_UDP):
        return Reason.UNSUPPORTED_PROTOCOL
    l4 = ip.data
    if not isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
        return Reason.TRUNCATED_L4
    l4_length = total_length - ihl * 4
    if isinstance(l4, dpkt.udp.UDP) and not 8 <= l4.ulen <= l4_length:
        return Reason.TRUNCATED_L4
    if isinstance(l4, dpkt.tcp.TCP) and (l4.off << 2) > l4_length:
        return Reason.TRUNCATED_L4  # dpkt would accept options cut short; we do not
    return ParsedPacket(ip, l4, ihl > 5)


def _rewrite(packet: ParsedPacket, address: bytes, port: int, destination: bool) -> bytes:
    ip, l4 = packet.ip, packet.l4
    old_address = ip.dst if destination else ip.src
    old_port = l4.dport if destination else l4.sport
    ip.sum = checksum_replace(ip.sum, old_address, address)
    # The TCP/UDP checksum covers the pseudo-header's addresses as well as the port.
    if isinstance(l4, dpkt.tcp.TCP) or l4.sum != 0:  # UDP checksum 0 means "none"
        l4_sum = checksum_replace(
            l4.sum, old_address + old_port.to_bytes(2, "big"), address + port.to_bytes(2, "big")
        )
        if isinstance(l4, dpkt.udp.UDP) and l4_sum == 0:
            l4_sum = 0xFFFF  # RFC 768: a computed zero is sent as all ones
        l4.sum = l4_sum
    if destination:
        ip.dst, l4.dport = address, port
    else:
        ip.src, l4.sport = address, port
    # pack_hdr() rather than bytes(ip): dpkt recomputes checksums it finds zero.
    return bytes(ip.pack_hdr()) + bytes(ip.opts) + bytes(l4)


def rewrite_destination(packet: ParsedPacket, address: bytes, port: int) -> bytes:
    """DNAT: the packet bytes with destination address:port replaced."""
    return _rewrite(packet, address, port, destination=True)


def rewrite_source(packet: ParsedPacket, address: bytes, port: int) -> bytes:
    """Reverse NAT on replies: the packet bytes with source address:port replaced."""
    return _rewrite(packet, address, port, destination=False)
