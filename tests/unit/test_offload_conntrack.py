"""The offload path's conntrack entries as ctnetlink sends them, in both families: each is
encoded and decoded by pyroute2, as a dump's entries are, and read into a TrackedFlow; and
the flush request's family. No netlink socket is opened (tests/kernel does that)."""

from __future__ import annotations

import socket
import struct
from ipaddress import ip_address
from typing import Any

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.datapath.offload.conntrack import (
    ConntrackError,
    ConntrackTable,
    TrackedFlow,
    _tracked_flow,
    flush_request,
    nfgen_family,
)

LAYOUT = MarkLayout()
# Backend id 5's connections, as OffloadKernel asks for them: its bits and the proxied one.
MARK = LAYOUT.proxied | LAYOUT.backend_mark(5)
MASK = LAYOUT.proxied | LAYOUT.id_mask


def packed(text: str) -> bytes:
    return ip_address(text).packed


def ct_tuple(src: str, dst: str, proto: int, sport: int, dport: int) -> dict[str, Any]:
    kind = "V6" if ip_address(src).version == 6 else "V4"
    return {
        "attrs": [
            ("CTA_TUPLE_IP", {"attrs": [(f"CTA_IP_{kind}_SRC", src), (f"CTA_IP_{kind}_DST", dst)]}),
            (
                "CTA_TUPLE_PROTO",
                {
                    "attrs": [
                        ("CTA_PROTO_NUM", proto),
                        ("CTA_PROTO_SRC_PORT", sport),
                        ("CTA_PROTO_DST_PORT", dport),
                    ]
                },
            ),
        ]
    }


def entry(
    client: str,
    vip: str,
    backend: str,
    proto: int = 6,
    mark: int = MARK,
    reply: bool = True,
    started_ns: int | None = None,
) -> Any:
    """A conntrack entry of client:40000 -> vip:80, DNATed to backend:8080, as a dump
    returns it (encoded, then decoded by pyroute2)."""
    family = socket.AF_INET6 if ip_address(client).version == 6 else socket.AF_INET
    message = nfct_msg()
    message["nfgen_family"] = family
    attrs: list[tuple[str, Any]] = [("CTA_TUPLE_ORIG", ct_tuple(client, vip, proto, 40000, 80))]
    if reply:
        attrs.append(("CTA_TUPLE_REPLY", ct_tuple(backend, client, proto, 8080, 40000)))
    attrs += [("CTA_MARK", mark), ("CTA_TIMEOUT", 117)]
    if started_ns is not None:  # with net.netfilter.nf_conntrack_timestamp on
        attrs.append(("CTA_TIMESTAMP", {"attrs": [("CTA_TIMESTAMP_START", started_ns)]}))
    message["attrs"] = attrs
    message.encode()
    decoded = nfct_msg(message.data)
    decoded.decode()
    return decoded


def test_an_ipv6_entry_reads_as_16_byte_addresses() -> None:
    dumped = entry("fd00:10:244:1::2", "fd00:10:96::10", "fd00:10:244:11::2")
    flow = _tracked_flow(dumped, MARK, MASK)
    assert flow == TrackedFlow(
        proto=6,
        client_ip=packed("fd00:10:244:1::2"),
        client_port=40000,
        vip=packed("fd00:10:96::10"),
        vport=80,
        backend_ip=packed("fd00:10:244:11::2"),
        backend_port=8080,
        mark=MARK,
        timeout=117,
    )


def test_an_entry_with_a_timestamp_knows_when_it_started() -> None:
    started = 1_796_000_000_123_456_789
    with_stamp = _tracked_flow(entry("10.244.1.2", "10.96.0.10", "10.244.11.2",
                                     started_ns=started), MARK, MASK)  # fmt: skip
    without = _tracked_flow(entry("10.244.1.2", "10.96.0.10", "10.244.11.2"), MARK, MASK)
    assert with_stamp is not None and with_stamp.started == pytest.approx(started / 1e9)
    assert without is not None and without.started is None


def test_an_ipv4_entry_reads_as_before() -> None:
    flow = _tracked_flow(entry("10.244.1.2", "10.96.0.10", "10.244.11.2", 17), MARK, MASK)
    assert flow is not None
    assert (flow.proto, flow.client_ip, flow.vip, flow.backend_ip, flow.backend_port) == (
        17,
        packed("10.244.1.2"),
        packed("10.96.0.10"),
        packed("10.244.11.2"),
        8080,
    )


def test_sctp_entries_are_read_and_portless_or_half_entries_skipped() -> None:
    sctp = _tracked_flow(entry("fd00::2", "fd00:10:96::10", "fd00::11", 132), MARK, MASK)
    assert sctp is not None and (sctp.proto, sctp.vport, sctp.backend_port) == (132, 80, 8080)
    assert _tracked_flow(entry("fd00::2", "fd00::10", "fd00::11", 58), MARK, MASK) is None
    assert _tracked_flow(entry("fd00::2", "fd00::10", "fd00::11", reply=False), MARK, MASK) is None


def test_an_ipv6_entry_outside_the_mark_filter_stops_the_call() -> None:
    with pytest.raises(ConntrackError, match="ignored the mark filter"):
        _tracked_flow(entry("fd00::2", "fd00::10", "fd00::11", mark=LAYOUT.proxied), MARK, MASK)


def test_a_request_names_the_family_served_or_none_for_both() -> None:
    assert nfgen_family([4]) == socket.AF_INET
    assert nfgen_family([6]) == socket.AF_INET6
    assert nfgen_family({4, 6}) == socket.AF_UNSPEC
    assert ConntrackTable().family == socket.AF_INET  # the default keeps to IPv4
    assert ConntrackTable((6, 4)).family == socket.AF_UNSPEC
    for wrong in ([], [5], [4, 5]):
        with pytest.raises(ValueError, match="4, 6 or both"):
            nfgen_family(wrong)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNSPEC])
def test_a_flush_request_keeps_to_its_family_with_version_1(family: int) -> None:
    data = flush_request(MARK, MASK, family)
    length, kind = struct.unpack_from("=IH", data)
    # nlmsghdr (16 bytes), then nfgenmsg: family, version, resource id.
    nfgen, version = struct.unpack_from("=BB", data, 16)
    assert (length, kind & 0xFF, kind >> 8) == (len(data), 2, 1)  # CT_DELETE of ctnetlink
    assert (nfgen, version) == (family, 1)
    decoded = nfct_msg(data)
    decoded.decode()
    assert (decoded.get_attr("CTA_MARK"), decoded.get_attr("CTA_MARK_MASK")) == (MARK, MASK)
    assert decoded.get_attr("CTA_TUPLE_ORIG") is None  # no tuple: a flush
