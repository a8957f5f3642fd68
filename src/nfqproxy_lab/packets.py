"""Builders for test packets, on dpkt's header layouts."""

from __future__ import annotations

import socket

import dpkt
import google_crc32c

from nfqproxy.datapath.reference.checksum import internet_checksum


def addr(text: str) -> bytes:
    return socket.inet_aton(text)


def tcp_packet(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    flags: int = dpkt.tcp.TH_SYN,
    payload: bytes = b"",
    ip_options: bytes = b"",
) -> bytes:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1000, data=payload)
    ip = dpkt.ip.IP(src=addr(src), dst=addr(dst), p=dpkt.ip.IP_PROTO_TCP, data=segment, ttl=64)
    if ip_options:
        ip.opts = ip_options
        ip.hl = 5 + len(ip_options) // 4
    return bytes(ip)


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes = b"q") -> bytes:
    datagram = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    datagram.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=addr(src), dst=addr(dst), p=dpkt.ip.IP_PROTO_UDP, data=datagram, ttl=64)
    return bytes(ip)


def checksums_verify(raw: bytes) -> bool:
    """Whether the IP and TCP/UDP checksums of raw are correct, by full recompute."""
    ip = dpkt.ip.IP(raw)
    claimed_ip, claimed_l4 = ip.sum, ip.data.sum
    if isinstance(ip.data, dpkt.udp.UDP) and claimed_l4 == 0:
        claimed_l4 = None
    ip.sum = 0
    ip.data.sum = 0
    recomputed = dpkt.ip.IP(bytes(ip))
    return recomputed.sum == claimed_ip and (
        claimed_l4 is None or recomputed.data.sum == claimed_l4
    )


def icmp_error(
    src: str, dst: str, quoted: bytes, icmp_type: int = 3, code: int = 3, quote: int = 28
) -> bytes:
    """An ICMP error from src to dst quoting the first quote bytes of the packet quoted
    (RFC 792 asks for the IP header and 8 bytes; Linux quotes more)."""
    body = quoted[:quote]
    message = bytes([icmp_type, code, 0, 0]) + b"\x00\x00\x05\xdc" + body  # next-hop MTU 1500
    checksum = internet_checksum(message)
    message = message[:2] + checksum.to_bytes(2, "big") + message[4:]
    ip = dpkt.ip.IP(src=addr(src), dst=addr(dst), p=dpkt.ip.IP_PROTO_ICMP, ttl=64)
    ip.data = message
    ip.len = 20 + len(message)
    return bytes(ip)


def icmp_checksums_verify(raw: bytes) -> bool:
    """Whether an ICMP error's outer IP, ICMP and quoted IP header checksums are right."""
    hl = (raw[0] & 0x0F) * 4
    inner = hl + 8
    inner_hl = (raw[inner] & 0x0F) * 4
    return (
        internet_checksum(raw[:hl]) == 0
        and internet_checksum(raw[hl:]) == 0
        and internet_checksum(raw[inner : inner + inner_hl]) == 0
    )


# --- IPv6 -----------------------------------------------------------------------------


def addr6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def _pseudo_sum6(src: bytes, dst: bytes, proto: int, upper: bytes) -> int:
    """The checksum of an upper-layer message over IPv6 (RFC 8200 section 8.1)."""
    pseudo = src + dst + len(upper).to_bytes(4, "big") + bytes(3) + bytes([proto])
    return internet_checksum(pseudo + upper)


def ip6_packet(
    src: str, dst: str, proto: int, upper: bytes, extensions: bytes = b"", first: int = 0
) -> bytes:
    """An IPv6 packet. extensions: extension headers, already chained, the first of type
    first (then proto is the type the last one names)."""
    header = (
        bytes([0x60, 0, 0, 0])
        + (len(extensions) + len(upper)).to_bytes(2, "big")
        + bytes([first if extensions else proto, 64])
        + addr6(src)
        + addr6(dst)
    )
    return header + extensions + upper


def _with_checksum(src: str, dst: str, proto: int, upper: bytes, at: int) -> bytes:
    value = _pseudo_sum6(addr6(src), addr6(dst), proto, upper)
    if proto == 17 and value == 0:
        value = 0xFFFF
    return upper[:at] + value.to_bytes(2, "big") + upper[at + 2 :]


def tcp6_segment(
    src: str, sport: int, dst: str, dport: int, flags: int = dpkt.tcp.TH_SYN, payload: bytes = b""
) -> bytes:
    segment = bytes(dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1000, data=payload))
    return _with_checksum(src, dst, 6, segment[:16] + b"\0\0" + segment[18:], 16)


def udp6_datagram(src: str, sport: int, dst: str, dport: int, payload: bytes = b"q") -> bytes:
    datagram = (
        sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + (8 + len(payload)).to_bytes(2, "big")
    )
    return _with_checksum(src, dst, 17, datagram + b"\0\0" + payload, 6)


def tcp6_packet(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    flags: int = dpkt.tcp.TH_SYN,
    payload: bytes = b"",
    extensions: bytes = b"",
    first: int = 0,
) -> bytes:
    segment = tcp6_segment(src, sport, dst, dport, flags, payload)
    return ip6_packet(src, dst, 6, segment, extensions, first)


def udp6_packet(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    payload: bytes = b"q",
    extensions: bytes = b"",
    first: int = 0,
) -> bytes:
    datagram = udp6_datagram(src, sport, dst, dport, payload)
    return ip6_packet(src, dst, 17, datagram, extensions, first)


def extension_header(next_header: int, length_units: int = 0) -> bytes:
    """A hop-by-hop or destination options header of (length_units + 1) * 8 bytes, padded
    with PadN."""
    size = (length_units + 1) * 8
    return bytes([next_header, length_units, 1, size - 4]) + bytes(size - 4)


def fragment_header(next_header: int, offset: int, more: bool, ident: int = 7) -> bytes:
    return (
        bytes([next_header, 0])
        + ((offset << 3) | int(more)).to_bytes(2, "big")
        + ident.to_bytes(4, "big")
    )


def icmp6_error(src: str, dst: str, quoted: bytes, icmp_type: int = 1, code: int = 4) -> bytes:
    """An ICMPv6 error from src to dst quoting the packet (as much as fits in 1280 bytes,
    RFC 4443). Type 2 (Packet Too Big) carries an MTU of 1280."""
    body = quoted[: 1280 - 48]
    word = (1280).to_bytes(4, "big") if icmp_type == 2 else bytes(4)
    message = bytes([icmp_type, code, 0, 0]) + word + body
    message = _with_checksum(src, dst, 58, message, 2)
    return ip6_packet(src, dst, 58, message)


def checksums6_verify(raw: bytes) -> bool:
    """Whether the upper-layer checksum of an IPv6 packet without extension headers (TCP,
    UDP or ICMPv6) is right, by full recompute over the pseudo-header."""
    proto, upper = raw[6], raw[40:]
    return _pseudo_sum6(raw[8:24], raw[24:40], proto, upper) == 0 and len(upper) == int.from_bytes(
        raw[4:6], "big"
    )


# --- SCTP (built by hand: this kernel has no SCTP sockets) ------------------------------


def sctp_chunk(chunk_type: int, body: bytes = b"", flags: int = 0) -> bytes:
    """One chunk, padded to 4 bytes. INIT (1) and INIT ACK (2) bodies: initiate tag, a_rwnd,
    stream counts, initial TSN; DATA (0): TSN, stream, sequence, protocol id, user data."""
    length = 4 + len(body)
    return bytes([chunk_type, flags]) + length.to_bytes(2, "big") + body + bytes(-length % 4)


def sctp_init_body(tag: int) -> bytes:
    return tag.to_bytes(4, "big") + (65536).to_bytes(4, "big") + b"\x00\x0a\x00\x0a" + bytes(4)


def sctp_common(sport: int, dport: int, tag: int, chunks: bytes) -> bytes:
    """The SCTP packet with its CRC32c, stored as Linux stores it (little-endian bytes)."""
    header = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + tag.to_bytes(4, "big")
    crc = int(google_crc32c.value(header + bytes(4) + chunks))
    return header + crc.to_bytes(4, "little") + chunks


def sctp_checksum_verifies(segment: bytes) -> bool:
    crc = int(google_crc32c.value(segment[:8] + bytes(4) + segment[12:]))
    return segment[8:12] == crc.to_bytes(4, "little")


def sctp_packet(src: str, sport: int, dst: str, dport: int, tag: int, chunks: bytes) -> bytes:
    segment = sctp_common(sport, dport, tag, chunks)
    if ":" in src:
        return ip6_packet(src, dst, 132, segment)
    ip = dpkt.ip.IP(src=addr(src), dst=addr(dst), p=132, ttl=64)
    ip.data = segment
    ip.len = 20 + len(segment)
    return bytes(ip)


def sctp_or_about_sctp(packet: bytes) -> bool:
    """Whether an IPv4 packet is SCTP, or an ICMP error quoting an SCTP packet: what a data
    path without SCTP handles differently from one with it."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return False
    if packet[9] == 132:
        return True
    inner = (packet[0] & 0x0F) * 4 + 8
    return packet[9] == 1 and len(packet) > inner + 9 and packet[inner + 9] == 132
