"""The kernel's conntrack entries of offloaded flows, read and deleted over ctnetlink.

Userspace marks each flow it hands to conntrack NAT (the entry's ctmark); this module finds
those entries by mark, counts them and deletes them, through pyroute2's ctnetlink socket,
never by running conntrack(8). IPv4, IPv6 or both, as the service ranges are: each request
names one family, or none (AF_UNSPEC: every family) when both are served, so that a
dual-stack node still walks its table once per dump or flush, not once per family.

The kernel filters by mark, (ctmark & mask) == mark, on dumps and on flushes, so nothing
here walks the whole table in Python. Every call is blocking: the proxy's event loop runs
it in an executor thread.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import AsyncNFCTSocket
from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkDecodeError, NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import (
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
    nfct_msg,
)

T = TypeVar("T")

NETLINK_NETFILTER = 12  # linux/netlink.h; the socket module does not name it
# A flush's request and the one answer read back: nlmsghdr, then nlmsgerr's error code.
_ACK = struct.Struct("=IHHIIi")
FLUSH_SEQUENCE = 1
FLUSH_TIMEOUT = 60.0  # seconds: a walk of millions of entries takes a second or two

U32 = 0xFFFF_FFFF
# Transports whose entries carry ports (CTA_PROTO_SRC_PORT/DST_PORT): SCTP's as TCP's.
PROTOCOLS = frozenset({socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_SCTP})
# A tuple's addresses, by the attributes that hold them: pyroute2 decodes them to text.
_ADDRESS_ATTRIBUTES = (
    (socket.AF_INET, "CTA_IP_V4_SRC", "CTA_IP_V4_DST"),
    (socket.AF_INET6, "CTA_IP_V6_SRC", "CTA_IP_V6_DST"),
)
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}

# Why a request failed, for the errors that have a usual cause.
_HINTS = {
    errno.EPERM: "needs CAP_NET_ADMIN in this network namespace",
    errno.EACCES: "needs CAP_NET_ADMIN in this network namespace",
    errno.EPROTONOSUPPORT: "is ctnetlink (nf_conntrack_netlink) in this kernel?",
    errno.EOPNOTSUPP: "is ctnetlink (nf_conntrack_netlink) in this kernel?",
    errno.ENOBUFS: "the netlink socket's receive buffer overflowed",
}


class ConntrackError(RuntimeError):
    """ctnetlink could not do what was asked; the message says what, and why if known."""


@dataclass(frozen=True, slots=True)
class TrackedFlow:
    """One conntrack entry of a TCP, UDP or SCTP flow, as userspace DNATed it."""

    proto: int  # 6, 17 or 132
    client_ip: bytes  # packed, 4 or 16 bytes: the original tuple's source
    client_port: int
    vip: bytes  # the original tuple's destination
    vport: int
    backend_ip: bytes  # the reply tuple's source: where DNAT sent the flow
    backend_port: int
    mark: int  # the entry's ctmark
    timeout: int  # seconds left, from CTA_TIMEOUT
    # When it began (wall clock, seconds): CTA_TIMESTAMP, which conntrack records only
    # with net.netfilter.nf_conntrack_timestamp on; None otherwise.
    started: float | None = None


def nfgen_family(families: Iterable[int]) -> int:
    """The family a request names for these IP versions: AF_UNSPEC (0) for both."""
    wanted = set(families)
    if not wanted or not wanted <= _FAMILIES.keys():
        raise ValueError(f"IP versions {sorted(wanted)!r}: 4, 6 or both")
    return _FAMILIES[wanted.pop()] if len(wanted) == 1 else socket.AF_UNSPEC


class ConntrackTable:
    """ctnetlink in the current network namespace (the calling thread's), for the entries
    of the IP versions given (IPv4 by default).

    Each call opens its own socket and closes it before returning, so an error never leaves
    a broken socket behind and calls from different executor threads share no netlink
    state (pyroute2 0.9 keeps its sockets and event loops per thread anyway). Opening one
    costs far less than the kernel's walk of its conntrack hash table that every dump and
    flush makes.

    Methods raise ConntrackError when ctnetlink fails, and ValueError for a mark, mask or
    key_mask that is not 32 bits, or a mark with bits outside its mask (nothing could match).
    """

    def __init__(self, families: Iterable[int] = (4,)) -> None:
        self._closed = False
        self.family = nfgen_family(families)

    def flows(self, mark: int, mask: int, limit: int | None = None) -> list[TrackedFlow]:
        """The TCP, UDP and SCTP entries with (ctmark & mask) == mark; others skipped.
        limit: stop after that many (the socket is closed with the rest unread)."""
        _check_filter(mark, mask)

        async def collect(sock: Any) -> list[TrackedFlow]:
            found: list[TrackedFlow] = []
            async for entry in _dump(sock, mark, mask):
                flow = _tracked_flow(entry, mark, mask)
                if flow is not None:
                    found.append(flow)
                    if limit is not None and len(found) >= limit:
                        break
            return found

        return self._run(f"dump conntrack entries of mark {mark:#x}/{mask:#x}", collect)

    def count_by_mark(
        self, mark: int, mask: int, key_mask: int, limit: int | None = None
    ) -> dict[int, int]:
        """How many entries (any protocol) with (ctmark & mask) == mark there are, per
        (ctmark & key_mask). Only the mark of each entry is read. limit: stop after that
        many entries (the counts are then a floor)."""
        _check_filter(mark, mask)
        _check_u32("key_mask", key_mask)

        async def tally(sock: Any) -> dict[int, int]:
            counts: dict[int, int] = {}
            seen = 0
            async for entry in _dump(sock, mark, mask):
                key = _checked_mark(entry, mark, mask) & key_mask
                counts[key] = counts.get(key, 0) + 1
                seen += 1
                if limit is not None and seen >= limit:
                    break  # the socket closes with the session; the rest is discarded
            return counts

        return self._run(f"count conntrack entries of mark {mark:#x}/{mask:#x}", tally)

    def delete(self, mark: int, mask: int) -> None:
        """Deletes the entries (any protocol) with (ctmark & mask) == mark: one filtered
        flush, which walks the table in the kernel whatever it deletes.

        Nothing is read back, so the caller learns no count. Counting first took a dump,
        and pyroute2 parses each dumped entry in Python, holding the GIL: 10,000 entries of
        a busy backend took 0.8 s, during which the proxy's next sync crawled. Deleting
        entry by entry would cost a netlink round trip each.

        The request goes out on a plain netlink socket, not pyroute2's asyncio one: setting
        that up costs 1-2 ms of Python per call, holding the GIL while the proxy's next
        sync waits for it. pyroute2 still encodes the message.

        Since Linux 4.19 (commit 9306425b70bf) a kernel that cannot filter by mark
        (no CONFIG_NF_CONNTRACK_MARK) refuses the flush with EOPNOTSUPP rather than
        flushing everything; the hooks' CONNMARK needs that option anyway.

        A mask of 0 would delete every entry of the families served, the host's own
        connections included: refused with ValueError.
        """
        _check_filter(mark, mask)
        if mask == 0:
            raise ValueError("refusing to delete with mask 0: it matches every entry")
        action = f"delete conntrack entries of mark {mark:#x}/{mask:#x}"
        self._check_callable(action)
        try:
            code = _flush(flush_request(mark, mask, self.family))
        except OSError as exc:
            raise ConntrackError(_explain(action, exc.errno, str(exc))) from exc
        if code:
            raise ConntrackError(_explain(action, code))

    def close(self) -> None:
        """Later calls raise ConntrackError. No socket outlives a call, so none is open."""
        self._closed = True

    def _check_callable(self, action: str) -> None:
        if self._closed:
            raise ConntrackError(f"cannot {action}: the conntrack table is closed")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConntrackError(
                f"cannot {action} from a running event loop: ConntrackTable blocks, "
                "call it in an executor thread"
            )

    def _run(self, action: str, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Runs work(socket) on a new ctnetlink socket in an event loop of its own, and
        turns every failure into a ConntrackError that names the action."""
        self._check_callable(action)
        try:
            # A plain selector loop, not the policy's: pyroute2 wraps the netlink socket
            # in an asyncio transport, and uvloop (the proxy's loop) is not known to
            # accept AF_NETLINK sockets.
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                return runner.run(_session(work, self.family))
        except ConntrackError:
            raise
        except NetlinkError as exc:
            raise ConntrackError(_explain(action, exc.code)) from exc
        except OSError as exc:
            raise ConntrackError(_explain(action, exc.errno, str(exc))) from exc
        except NetlinkDecodeError as exc:
            raise ConntrackError(
                f"cannot {action}: pyroute2 could not decode ctnetlink's answer ({exc.exception!r})"
            ) from exc


async def _session(work: Callable[[Any], Coroutine[Any, Any, T]], family: int) -> T:
    # Every request on the socket names this family (AsyncNFCTSocket.request sets it).
    sock = AsyncNFCTSocket(nfgen_family=family)
    try:
        return await work(sock)
    finally:
        sock.close()


async def _dump(sock: Any, mark: int, mask: int) -> AsyncIterator[Any]:
    """The entries of the socket's family with (ctmark & mask) == mark, filtered by the
    kernel.

    The request is built here, not by NFCTSocket.dump(), which drops the filter when the
    mark is 0 and would then return the whole table."""
    request = nfct_msg.create_from(mark=mark, mark_mask=mask)
    async for entry in await sock.request(
        request, IPCTNL_MSG_CT_GET, msg_flags=NLM_F_REQUEST | NLM_F_DUMP
    ):
        yield entry


def flush_request(mark: int, mask: int, family: int) -> bytes:
    """A request that deletes the entries of a family (AF_UNSPEC: every family) with
    (ctmark & mask) == mark: a delete request with no tuple is a flush, and CTA_MARK with
    CTA_MARK_MASK filter it.

    Not NFCTSocket.flush(): it leaves the nfgenmsg version at 0, and for version 0 the
    kernel flushes every address family whatever nfgen_family says. With version 1 it
    keeps to nfgen_family (seen on 6.18), and AF_UNSPEC matches every family (the
    kernel's filter skips the family check for 0)."""
    request = nfct_msg.create_from(mark=mark, mark_mask=mask)
    request["nfgen_family"] = family
    request["version"] = 1
    request["header"]["type"] = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    request["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    request["header"]["sequence_number"] = FLUSH_SEQUENCE
    request.encode()
    data: bytes = request.data
    return data


def _flush(request: bytes) -> int:
    """Sends a flush_request and returns the kernel's answer, 0 or an errno."""
    raw = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    with socket.socket(socket.AF_NETLINK, raw, NETLINK_NETFILTER) as sock:
        sock.settimeout(FLUSH_TIMEOUT)
        sock.bind((0, 0))
        sock.send(request)
        while True:  # the answer is one ACK: an NLMSG_ERROR of code 0, or the error
            answer = sock.recv(65536)
            if len(answer) < _ACK.size:
                raise OSError(errno.EBADMSG, "a truncated answer from ctnetlink")
            _length, kind, _flags, sequence, _pid, code = _ACK.unpack_from(answer)
            if kind == NLMSG_ERROR and sequence == FLUSH_SEQUENCE:
                return -int(code)


def _checked_mark(entry: Any, mark: int, mask: int) -> int:
    """The entry's ctmark, checked against the filter the kernel was asked to apply.

    A kernel built without CONFIG_NF_CONNTRACK_MARK ignores the filter; a flush would then
    delete every entry. So a dumped entry that does not match stops the call before any
    flush. Such a kernel sends no CTA_MARK: every mark is 0 there."""
    ctmark = int(entry.get_attr("CTA_MARK") or 0)
    if ctmark & mask != mark:
        raise ConntrackError(
            f"the kernel ignored the mark filter {mark:#x}/{mask:#x}: it returned an entry "
            f"of mark {ctmark:#x} (is CONFIG_NF_CONNTRACK_MARK set?)"
        )
    return ctmark


def _tracked_flow(entry: Any, mark: int, mask: int) -> TrackedFlow | None:
    ctmark = _checked_mark(entry, mark, mask)
    original = entry.get_attr("CTA_TUPLE_ORIG")
    reply = entry.get_attr("CTA_TUPLE_REPLY")
    if original is None or reply is None:
        return None
    original_ports = original.get_attr("CTA_TUPLE_PROTO")
    reply_ports = reply.get_attr("CTA_TUPLE_PROTO")
    if original_ports is None or reply_ports is None:
        return None
    proto = int(original_ports.get_attr("CTA_PROTO_NUM") or 0)
    if proto not in PROTOCOLS:
        return None
    client, vip = _addresses(original.get_attr("CTA_TUPLE_IP"))
    backend, _ = _addresses(reply.get_attr("CTA_TUPLE_IP"))
    # Both tuples of one entry are of its family; a DNAT never crosses families.
    if not client or len(client) != len(backend):
        return None
    return TrackedFlow(
        proto=proto,
        client_ip=client,
        client_port=int(original_ports.get_attr("CTA_PROTO_SRC_PORT")),
        vip=vip,
        vport=int(original_ports.get_attr("CTA_PROTO_DST_PORT")),
        backend_ip=backend,
        backend_port=int(reply_ports.get_attr("CTA_PROTO_SRC_PORT")),
        mark=ctmark,
        timeout=int(entry.get_attr("CTA_TIMEOUT") or 0),
        started=_started(entry),
    )


def _started(entry: Any) -> float | None:
    stamp = entry.get_attr("CTA_TIMESTAMP")
    start = stamp.get_attr("CTA_TIMESTAMP_START") if stamp is not None else None
    return int(start) / 1e9 if start else None


def _addresses(tuple_ip: Any) -> tuple[bytes, bytes]:
    """A tuple's (source, destination), packed; empty when it holds neither family's.

    pyroute2 decodes the addresses to text; the data path keys flows by packed bytes."""
    if tuple_ip is not None:
        for family, source, destination in _ADDRESS_ATTRIBUTES:
            src, dst = tuple_ip.get_attr(source), tuple_ip.get_attr(destination)
            if src is not None and dst is not None:
                return socket.inet_pton(family, src), socket.inet_pton(family, dst)
    return b"", b""


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= U32:
        raise ValueError(f"{name} {value:#x} is not a 32-bit value")


def _check_filter(mark: int, mask: int) -> None:
    _check_u32("mark", mark)
    _check_u32("mask", mask)
    if mark & ~mask:
        raise ValueError(f"mark {mark:#x} has bits outside mask {mask:#x}: nothing could match")


def _explain(action: str, code: int | None, detail: str = "") -> str:
    reason = os.strerror(code) if code else detail or "unknown error"
    hint = _HINTS.get(code or 0)
    return f"cannot {action} over ctnetlink: {reason}" + (f" ({hint})" if hint else "")
