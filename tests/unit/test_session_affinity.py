"""sessionAffinity ClientIP on both data paths: stickiness, renewal, timeout, removal, limits."""

from __future__ import annotations

from ipaddress import ip_address

import dpkt

from nfqproxy.datapath.interface import Datapath
from nfqproxy_lab.packets import tcp_packet, udp_packet
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import MakeDatapath, status_section
from tests.helpers.snapshots import BACKENDS, snapshot

VIP = "10.96.0.10"
ALL = frozenset(range(len(BACKENDS)))


def make(
    make_datapath: MakeDatapath, affinity: int, capacity: int = 4096
) -> tuple[Datapath, FakeClock]:
    """A data path of its own clock, with web and empty programmed."""
    clock = FakeClock()
    datapath = make_datapath(capacity=capacity, clock=clock)
    datapath.apply(snapshot(ALL, affinity))
    return datapath, clock


def backend_of(datapath: Datapath, client: str, sport: int, proto: str = "tcp") -> str:
    if proto == "tcp":
        packet = tcp_packet(client, sport, VIP, 80, dpkt.tcp.TH_SYN)
    else:
        packet = udp_packet(client, sport, VIP, 53, b"q")
    verdict = datapath.process(packet)
    assert verdict.reason == "new_flow", verdict
    assert verdict.payload is not None
    return str(ip_address(verdict.payload[16:20]))


def test_new_connections_from_one_client_stick_to_one_backend(make_datapath: MakeDatapath) -> None:
    sticky, _ = make(make_datapath, 10800)
    plain, _ = make(make_datapath, 0)
    chosen = {backend_of(sticky, "10.244.1.2", port) for port in range(2000, 2040)}
    assert len(chosen) == 1
    assert len({backend_of(plain, "10.244.1.2", port) for port in range(2000, 2040)}) > 1
    assert sticky.counters["affinity_hit"] == 39
    # Per service port: the client's UDP flows to web:dns have an affinity of their own.
    assert len({backend_of(sticky, "10.244.1.2", p, "udp") for p in range(3000, 3020)}) == 1
    assert status_section(sticky, "session_affinity")["clients"] == 2


def test_each_new_connection_renews_the_timeout_and_idle_clients_are_forgotten(
    make_datapath: MakeDatapath,
) -> None:
    datapath, clock = make(make_datapath, 30)
    first = backend_of(datapath, "10.244.1.2", 2000)
    clock.advance(20)
    assert backend_of(datapath, "10.244.1.2", 2001) == first  # renewed until +50
    clock.advance(25)
    assert backend_of(datapath, "10.244.1.2", 2002) == first  # renewed until +75
    clock.advance(31)
    datapath.expire()
    assert status_section(datapath, "session_affinity")["clients"] == 0
    # Forgotten: the next flow is Maglev's choice, exactly as without affinity.
    plain, _ = make(make_datapath, 0)
    for port in range(2003, 2013):
        forgotten, _ = make(make_datapath, 30)
        assert backend_of(forgotten, "10.244.1.2", port) == backend_of(plain, "10.244.1.2", port)


def test_a_client_whose_backend_left_moves_to_a_new_one_and_sticks_there(
    make_datapath: MakeDatapath,
) -> None:
    datapath, _ = make(make_datapath, 10800)
    first = backend_of(datapath, "10.244.1.2", 2000)
    datapath.apply(snapshot(ALL - {BACKENDS.index(first)}, 10800))
    moved = {backend_of(datapath, "10.244.1.2", port) for port in range(2001, 2021)}
    assert len(moved) == 1 and first not in moved


def test_a_full_affinity_table_keeps_the_clients_it_has(make_datapath: MakeDatapath) -> None:
    datapath, _ = make(make_datapath, 10800, capacity=8)  # room for 2 clients
    remembered = [backend_of(datapath, f"10.244.1.{i}", 2000) for i in (2, 3)]
    for i in range(4, 10):
        backend_of(datapath, f"10.244.1.{i}", 2000)
    assert datapath.counters["affinity_table_full"] == 6
    for port in range(2001, 2005):
        for i, backend in zip((2, 3), remembered, strict=True):
            assert backend_of(datapath, f"10.244.1.{i}", port) == backend
