"""Builders for test packets, on dpkt's header layouts."""

from __future__ import annotations

import socket

import dpkt

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
