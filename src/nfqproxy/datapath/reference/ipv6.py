"""The IPv6 header and its chain of extension headers (RFC 8200), walked to the
upper-layer header with a bound on how many there may be."""

from __future__ import annotations

from dataclasses import dataclass

from nfqproxy.datapath.reference.reasons import Reason

HEADER = 40
# Cilium stops at 4; RFC 8200 recommends at most one of each kind, and 8 allows that with
# room. A longer chain is refused rather than walked: each costs a lookup per packet.
MAX_EXTENSION_HEADERS = 8
HOP_BY_HOP, ROUTING, FRAGMENT, AUTHENTICATION, DESTINATION_OPTIONS = 0, 43, 44, 51, 60
V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96
EXTENSION_HEADERS = frozenset({HOP_BY_HOP, ROUTING, FRAGMENT, AUTHENTICATION, DESTINATION_OPTIONS})


@dataclass(frozen=True, slots=True)
class Header:
    proto: int  # the upper-layer protocol
    l4: int  # offset of the upper-layer header
    total: int  # 40 + payload length: the bytes that are the packet
    extensions: int  # how many extension headers were walked
    first_fragment: bool  # offset 0 with more to come: the ports are here, not all the data
    later_fragment: bool  # a non-zero fragment offset: no upper-layer header at all


def walk(raw: bytes, at: int = 0, end: int | None = None) -> Header | str:
    """The IPv6 packet at raw[at:], or the Reason it cannot be read. end: where the bytes
    stop (an ICMPv6 error quotes a packet cut short: its payload length then overshoots,
    and the quoted part is walked as far as it goes)."""
    available = len(raw) if end is None else end
    if available - at < HEADER:
        return Reason.TRUNCATED_IP
    if raw[at + 8 : at + 20] == V4_MAPPED or raw[at + 24 : at + 36] == V4_MAPPED:
        # RFC 4291 2.5.5.2: never on the wire (Linux drops such a source on input). An
        # IPv4 flow keeps its address mapped so in the fast path's tables: refused, one
        # could pass for the other.
        return Reason.NOT_IP
    payload = int.from_bytes(raw[at + 4 : at + 6], "big")
    total = at + HEADER + payload
    if end is None:
        if payload == 0:
            return Reason.BAD_LENGTH  # a jumbogram (RFC 2675), or a lie: not served
        if total > available:
            return Reason.BAD_LENGTH
    else:
        total = min(total, available)
    proto, offset, count = raw[at + 6], at + HEADER, 0
    first = later = False
    while proto in EXTENSION_HEADERS:
        count += 1
        if count > MAX_EXTENSION_HEADERS or offset + 8 > total:
            return Reason.EXTENSION_HEADERS
        if proto == FRAGMENT:
            fragment_offset = int.from_bytes(raw[offset + 2 : offset + 4], "big") >> 3
            more = raw[offset + 3] & 1
            later = later or fragment_offset != 0
            first = first or (fragment_offset == 0 and bool(more))
            length = 8
        elif proto == AUTHENTICATION:
            length = (raw[offset + 1] + 2) * 4
        else:
            length = (raw[offset + 1] + 1) * 8
        proto, offset = raw[offset], offset + length
        if offset > total:
            return Reason.EXTENSION_HEADERS
        if later:
            break  # what follows is the middle of a datagram, not a header
    return Header(proto, offset, total, count, first, later)
