"""ICMP and ICMPv6 errors about a proxied TCP/UDP flow: read, and translated for the client.

An error quotes the packet that caused it as the node saw it leave (client -> backend).
The client's kernel matches an error to its socket by the quoted header, so the quote must
say client -> VIP:port again, and the error must come from the VIP. Path MTU discovery
(fragmentation needed, Packet Too Big) and refused ports then work through the VIP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nfqproxy.datapath.reference import ipv6
from nfqproxy.datapath.reference.checksum import checksum_replace
from nfqproxy.datapath.reference.reasons import Reason

# ICMP: destination unreachable, time exceeded, parameter problem.
ICMP_ERROR_TYPES = (3, 11, 12)
# ICMPv6: destination unreachable, packet too big, time exceeded, parameter problem.
ICMPV6_ERROR_TYPES = (1, 2, 3, 4)
ICMPV6 = 58
# The flows an error can be about: TCP, UDP, SCTP. (SCTP's quoted CRC32c is left stale by
# the port change: receivers match an error by its addresses, ports and verification tag.)
QUOTED_PROTOCOLS = (6, 17, 132)


@dataclass(slots=True)
class IcmpError:
    """Offsets into the error's bytes, which are all the translation needs."""

    raw: bytes  # up to the IP length
    version: int
    hl: int  # offset of the ICMP header
    inner: int  # offset of the quoted IP header
    inner_l4: int  # offset of the quoted TCP/UDP header (8 bytes of it at least)
    inner_proto: int

    @property
    def _size(self) -> int:
        return 4 if self.version == 4 else 16

    @property
    def _inner_src_at(self) -> int:
        return self.inner + (12 if self.version == 4 else 8)

    @property
    def outer_dst(self) -> bytes:
        at = 16 if self.version == 4 else 24
        return self.raw[at : at + self._size]

    @property
    def inner_src(self) -> bytes:
        return self.raw[self._inner_src_at : self._inner_src_at + self._size]

    @property
    def inner_dst(self) -> bytes:
        at = self._inner_src_at + self._size
        return self.raw[at : at + self._size]

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
    if inner_l4 + 8 > total or offset or raw[inner + 9] not in QUOTED_PROTOCOLS:
        return Reason.ICMP_BAD_INNER
    return IcmpError(bytes(raw[:total]), 4, hl, inner, inner_l4, raw[inner + 9])


def parse_icmp6_error(raw: bytes, hl: int, total: int) -> IcmpError | str:
    """An ICMPv6 error this proxy can translate, or the Reason it cannot."""
    if total - hl < 8:
        return Reason.TRUNCATED_L4
    if raw[hl] not in ICMPV6_ERROR_TYPES:
        return Reason.UNSUPPORTED_PROTOCOL  # echo, neighbour discovery: not ours
    inner = hl + 8
    if total - inner < ipv6.HEADER or raw[inner] >> 4 != 6:
        return Reason.ICMP_BAD_INNER
    quoted = ipv6.walk(raw, inner, end=total)
    if (
        isinstance(quoted, str)
        or quoted.later_fragment
        or quoted.proto not in QUOTED_PROTOCOLS
        or quoted.l4 + 8 > total
    ):
        return Reason.ICMP_BAD_INNER
    return IcmpError(bytes(raw[:total]), 6, hl, inner, quoted.l4, quoted.proto)


def translate_icmp_error(error: IcmpError, vip: bytes, vport: int, backend: bytes) -> bytes:
    """The error as the client must see it: the quoted destination backend -> VIP:port,
    and an outer source that was the backend -> the VIP. Every checksum is patched:
    ICMPv6's covers the outer addresses too (its pseudo-header), ICMP's does not."""
    pkt = bytearray(error.raw)
    icmp_sum = error.hl + 2

    def patch_sum(at: int, old: bytes, new: bytes) -> None:
        value = checksum_replace(int.from_bytes(pkt[at : at + 2], "big"), old, new)
        pkt[at : at + 2] = value.to_bytes(2, "big")

    def patch(at: int, new: bytes) -> None:  # a change inside the ICMP message
        patch_sum(icmp_sum, bytes(pkt[at : at + len(new)]), new)
        pkt[at : at + len(new)] = new

    dst_at = error._inner_src_at + error._size
    l4 = error.inner_l4
    old_dst, old_port = bytes(pkt[dst_at : dst_at + error._size]), bytes(pkt[l4 + 2 : l4 + 4])
    new_port = vport.to_bytes(2, "big")
    sum_at = l4 + (16 if error.inner_proto == 6 else 6)
    if error.inner_proto != 132 and sum_at + 2 <= len(pkt):  # TCP's may lie past the quote
        old_sum = int.from_bytes(pkt[sum_at : sum_at + 2], "big")
        if error.inner_proto == 6 or old_sum != 0:
            new_sum = checksum_replace(old_sum, old_dst + old_port, vip + new_port)
            if error.inner_proto == 17 and new_sum == 0:
                new_sum = 0xFFFF
            patch(sum_at, new_sum.to_bytes(2, "big"))
    if error.version == 4:
        inner_ip_sum = checksum_replace(
            int.from_bytes(pkt[error.inner + 10 : error.inner + 12], "big"), old_dst, vip
        )
        patch(error.inner + 10, inner_ip_sum.to_bytes(2, "big"))
    patch(dst_at, vip)
    patch(l4 + 2, new_port)
    _replace_outer_source(pkt, error, backend, vip, patch_sum)
    return bytes(pkt)


def _replace_outer_source(
    pkt: bytearray,
    error: IcmpError,
    backend: bytes,
    vip: bytes,
    patch_sum: Callable[[int, bytes, bytes], None],
) -> None:
    """An error the backend sent itself comes from the VIP instead."""
    at = 12 if error.version == 4 else 8
    if bytes(pkt[at : at + error._size]) != backend:
        return
    if error.version == 4:
        patch_sum(10, backend, vip)  # the IPv4 header checksum
    else:
        patch_sum(error.hl + 2, backend, vip)  # ICMPv6's pseudo-header holds the source
    pkt[at : at + error._size] = vip
