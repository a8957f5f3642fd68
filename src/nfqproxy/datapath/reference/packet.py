"""IPv4 TCP/UDP parsing and address rewriting, on dpkt's declarative header layouts.

parse() either returns a packet the proxy can rewrite or names the reason it cannot; it
never raises on any byte string. rewrite_destination() and rewrite_source() change one
address and port and patch both checksums incrementally.
"""

from __future__ import annotations

from dataclasses import dataclass

import dpkt

from nfqproxy.datapath.reference.checksum import checksum_replace

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
    ICMP_BAD_INNER = "icmp_bad_inner_header"


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


ICMP_ERROR_TYPES = (3, 11, 12)  # destination unreachable, time exceeded, parameter problem


@dataclass(slots=True)
class IcmpError:
    """An ICMP error about a TCP or UDP packet: offsets into its bytes, which are all
    the translation needs. The inner header is the packet that caused the error, as the
    node saw it leave: client -> backend."""

    raw: bytes  # up to the IP total length
    hl: int  # outer header length
    inner: int  # offset of the inner IP header
    inner_l4: int  # offset of the inner TCP/UDP header (8 bytes of it at least)

    @property
    def inner_proto(self) -> int:
        return self.raw[self.inner + 9]

    @property
    def inner_src(self) -> bytes:
        return self.raw[self.inner + 12 : self.inner + 16]

    @property
    def inner_dst(self) -> bytes:
        return self.raw[self.inner + 16 : self.inner + 20]

    @property
    def inner_sport(self) -> int:
        return int.from_bytes(self.raw[self.inner_l4 : self.inner_l4 + 2], "big")

    @property
    def inner_dport(self) -> int:
        return int.from_bytes(self.raw[self.inner_l4 + 2 : self.inner_l4 + 4], "big")


def parse_icmp_error(raw: bytes, hl: int, total: int) -> IcmpError | str:
    """An ICMP error this proxy can translate, or the Reason it cannot."""
    if total - hl < 8:
        return Reason.TRUNCATED_L4
    if raw[hl] not in ICMP_ERROR_TYPES:
        return Reason.UNSUPPORTED_PROTOCOL  # echo and the rest: not about a proxied flow
    inner = hl + 8
    if total - inner < 20 or raw[inner] >> 4 != 4 or raw[inner] & 0x0F < 5:
        return Reason.ICMP_BAD_INNER
    inner_l4 = inner + (raw[inner] & 0x0F) * 4
    offset = int.from_bytes(raw[inner + 6 : inner + 8], "big") & 0x1FFF
    if inner_l4 + 8 > total or offset or raw[inner + 9] not in (6, 17):
        return Reason.ICMP_BAD_INNER
    return IcmpError(bytes(raw[:total]), hl, inner, inner_l4)


def translate_icmp_error(error: IcmpError, vip: bytes, vport: int, backend: bytes) -> bytes:
    """The error as the client must see it: the inner destination backend -> VIP:port,
    and an outer source that was the backend -> the VIP. Every checksum is patched."""
    pkt = bytearray(error.raw)
    icmp_sum = error.hl + 2

    def patch(at: int, new: bytes) -> None:  # a change inside the ICMP message
        old = bytes(pkt[at : at + len(new)])
        value = checksum_replace(int.from_bytes(pkt[icmp_sum : icmp_sum + 2], "big"), old, new)
        pkt[icmp_sum : icmp_sum + 2] = value.to_bytes(2, "big")
        pkt[at : at + len(new)] = new

    inner, l4 = error.inner, error.inner_l4
    old_dst, old_port = bytes(pkt[inner + 16 : inner + 20]), bytes(pkt[l4 + 2 : l4 + 4])
    new_port = vport.to_bytes(2, "big")
    sum_at = l4 + (16 if error.inner_proto == 6 else 6)
    if sum_at + 2 <= len(pkt):  # TCP's checksum lies past the 8 bytes an error must quote
        old_sum = int.from_bytes(pkt[sum_at : sum_at + 2], "big")
        if error.inner_proto == 6 or old_sum != 0:
            new_sum = checksum_replace(old_sum, old_dst + old_port, vip + new_port)
            if error.inner_proto == 17 and new_sum == 0:
                new_sum = 0xFFFF
            patch(sum_at, new_sum.to_bytes(2, "big"))
    inner_ip_sum = checksum_replace(
        int.from_bytes(pkt[inner + 10 : inner + 12], "big"), old_dst, vip
    )
    patch(inner + 10, inner_ip_sum.to_bytes(2, "big"))
    patch(inner + 16, vip)
    patch(l4 + 2, new_port)
    if bytes(pkt[12:16]) == backend:
        outer_sum = checksum_replace(int.from_bytes(pkt[10:12], "big"), backend, vip)
        pkt[10:12] = outer_sum.to_bytes(2, "big")
        pkt[12:16] = vip
    return bytes(pkt)


def parse(raw: bytes) -> ParsedPacket | IcmpError | str:
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
    if ip.p == dpkt.ip.IP_PROTO_ICMP:
        return parse_icmp_error(raw, ihl * 4, total_length)
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
