"""Builders for test packets, on dpkt's header layouts."""

from __future__ import annotations

import socket

import dpkt


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
