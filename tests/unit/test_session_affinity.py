"""sessionAffinity ClientIP on both data paths: stickiness, renewal, timeout, removal, limits."""

from __future__ import annotations

from ipaddress import IPv4Network, ip_address
from typing import Any

import dpkt
import pytest

from nfqproxy.datapath.fast.datapath import FastDatapath, fast_path_available
from nfqproxy.datapath.reference.datapath import ReferenceDatapath
from nfqproxy_lab.packets import tcp_packet, udp_packet
from tests.helpers.clock import FakeClock
from tests.helpers.snapshots import BACKENDS, snapshot

VIP = "10.96.0.10"
ALL = frozenset(range(len(BACKENDS)))

DATAPATHS = [
    ReferenceDatapath,
    pytest.param(
        FastDatapath,
        marks=pytest.mark.skipif(not fast_path_available(), reason="the fast path is not built"),
    ),
]


def make(kind: Any, affinity: int, capacity: int = 4096) -> tuple[Any, FakeClock]:
    clock = FakeClock()
    datapath = kind([IPv4Network("10.96.0.0/12")], capacity=capacity, clock=clock)
    datapath.apply(snapshot(ALL, affinity))
    return datapath, clock


def backend_of(datapath: Any, client: str, sport: int, proto: str = "tcp") -> str:
    if proto == "tcp":
        packet = tcp_packet(client, sport, VIP, 80, dpkt.tcp.TH_SYN)
    else:
        packet = udp_packet(client, sport, VIP, 53, b"q")
    verdict = datapath.process(packet)
    assert verdict.reason == "new_flow", verdict
    assert verdict.payload is not None
    return str(ip_address(verdict.payload[16:20]))


@pytest.mark.parametrize("kind", DATAPATHS)
def test_new_connections_from_one_client_stick_to_one_backend(kind: Any) -> None:
    sticky, _ = make(kind, 10800)
    plain, _ = make(kind, 0)
    chosen = {backend_of(sticky, "10.244.1.2", port) for port in range(2000, 2040)}
    assert len(chosen) == 1
    assert len({backend_of(plain, "10.244.1.2", port) for port in range(2000, 2040)}) > 1
    assert sticky.counters["affinity_hit"] == 39
    # Per service port: the client's UDP flows to web:dns have an affinity of their own.
    assert len({backend_of(sticky, "10.244.1.2", p, "udp") for p in range(3000, 3020)}) == 1
    assert sticky.status()["session_affinity"]["clients"] == 2


@pytest.mark.parametrize("kind", DATAPATHS)
def test_each_new_connection_renews_the_timeout_and_idle_clients_are_forgotten(
    kind: Any,
) -> None:
    datapath, clock = make(kind, 30)
    first = backend_of(datapath, "10.244.1.2", 2000)
    clock.now += 20
    assert backend_of(datapath, "10.244.1.2", 2001) == first  # renewed until +50
    clock.now += 25
    assert backend_of(datapath, "10.244.1.2", 2002) == first  # renewed until +75
    clock.now += 31
    datapath.expire()
    assert datapath.status()["session_affinity"]["clients"] == 0
    # Forgotten: the next flow is Maglev's choice, exactly as without affinity.
    plain, _ = make(kind, 0)
    for port in range(2003, 2013):
        forgotten, _ = make(kind, 30)
        assert backend_of(forgotten, "10.244.1.2", port) == backend_of(plain, "10.244.1.2", port)


@pytest.mark.parametrize("kind", DATAPATHS)
def test_a_client_whose_backend_left_moves_to_a_new_one_and_sticks_there(kind: Any) -> None:
    datapath, _ = make(kind, 10800)
    first = backend_of(datapath, "10.244.1.2", 2000)
    datapath.apply(snapshot(ALL - {BACKENDS.index(first)}, 10800))
    moved = {backend_of(datapath, "10.244.1.2", port) for port in range(2001, 2021)}
    assert len(moved) == 1 and first not in moved


@pytest.mark.parametrize("kind", DATAPATHS)
def test_a_full_affinity_table_keeps_the_clients_it_has(kind: Any) -> None:
    datapath, _ = make(kind, 10800, capacity=8)  # room for 2 clients
    remembered = [backend_of(datapath, f"10.244.1.{i}", 2000) for i in (2, 3)]
    for i in range(4, 10):
        backend_of(datapath, f"10.244.1.{i}", 2000)
    assert datapath.counters["affinity_table_full"] == 6
    for port in range(2001, 2005):
        for i, backend in zip((2, 3), remembered, strict=True):
            assert backend_of(datapath, f"10.244.1.{i}", port) == backend
