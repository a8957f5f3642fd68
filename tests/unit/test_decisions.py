"""What the data paths record of their decisions (nfqproxy.datapath.decisions): the trace
behind `nfqproxy trace`, and the per service port counts behind the per service port
metrics, on every data path, and the fast path's trace against the reference's."""

from __future__ import annotations

from ipaddress import ip_address

import dpkt
import pytest

from nfqproxy.datapath.decisions import TraceEvent
from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.marks import SOURCE_OFF_CLUSTER, SOURCE_POD
from nfqproxy.model import Snapshot
from nfqproxy_lab.packets import tcp_packet, udp_packet
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import DATAPATHS, REFERENCE, datapath_params, new_datapath
from tests.helpers.snapshots import BACKENDS, EMPTY_VIP, NODE_IP, WEB_VIP, snapshot

CLIENT = "10.244.1.2"
PACKED_BACKENDS = {ip_address(b).packed for b in BACKENDS}


@pytest.fixture(params=datapath_params())
def programmed(request: pytest.FixtureRequest) -> Datapath:
    datapath = new_datapath(request.param, clock=FakeClock(1000.0))
    datapath.apply(snapshot(frozenset({0, 1, 2}), external=True))
    return datapath


def test_nothing_is_recorded_while_nobody_traces(programmed: Datapath) -> None:
    programmed.process(tcp_packet(CLIENT, 40000, WEB_VIP, 80), SOURCE_POD)
    programmed.process(tcp_packet(CLIENT, 40001, EMPTY_VIP, 80), SOURCE_POD)
    assert programmed.trace_take() == ([], 0)
    programmed.trace_start(16)
    programmed.trace_stop()
    programmed.process(tcp_packet(CLIENT, 40002, EMPTY_VIP, 80), SOURCE_POD)
    assert programmed.trace_take() == ([], 0)


def test_a_trace_names_each_new_flows_backend_and_each_refusals_reason(
    programmed: Datapath,
) -> None:
    programmed.trace_start(16)
    programmed.process(tcp_packet(CLIENT, 40000, WEB_VIP, 80), SOURCE_POD)
    programmed.process(udp_packet(CLIENT, 40000, WEB_VIP, 53), SOURCE_POD)
    programmed.process(tcp_packet(CLIENT, 40001, EMPTY_VIP, 80), SOURCE_POD)
    programmed.process(udp_packet(CLIENT, 40001, EMPTY_VIP, 53), SOURCE_POD)
    programmed.process(tcp_packet(CLIENT, 40002, WEB_VIP, 81), SOURCE_POD)
    programmed.process(b"\x45\x00\x00", SOURCE_POD)  # cut short: no tuple to show
    events, lost = programmed.trace_take()
    assert lost == 0
    assert [(e.action, e.reason) for e in events] == [
        ("accept", "new_flow"),
        ("accept", "new_flow"),
        ("reject", "no_endpoints"),
        ("drop", "no_local_endpoints"),
        ("reject", "port_not_served"),
        ("drop", "truncated_ip_header"),
    ]
    tcp, udp, refused = events[0], events[1], events[2]
    assert (tcp.protocol, tcp.client, tcp.client_port, tcp.destination, tcp.port) == (
        dpkt.ip.IP_PROTO_TCP, ip_address(CLIENT).packed, 40000, ip_address(WEB_VIP).packed, 80
    )  # fmt: skip
    assert tcp.backend in PACKED_BACKENDS and tcp.backend_port == 8080
    assert udp.backend in PACKED_BACKENDS and udp.backend_port == 5353
    assert refused.destination == ip_address(EMPTY_VIP).packed and refused.backend is None
    assert events[-1].client is None and events[-1].protocol == 0
    assert all(e.time == 1000.0 for e in events)
    assert programmed.trace_take() == ([], 0)  # taken once


def test_a_full_ring_keeps_what_it_can_and_counts_the_rest(programmed: Datapath) -> None:
    programmed.trace_start(2)
    for sport in range(40000, 40003):
        programmed.process(tcp_packet(CLIENT, sport, EMPTY_VIP, 80), SOURCE_POD)
    events, lost = programmed.trace_take()
    assert [e.client_port for e in events] == [40000, 40001] and lost == 1
    programmed.process(tcp_packet(CLIENT, 40003, EMPTY_VIP, 80), SOURCE_POD)
    events, lost = programmed.trace_take()
    assert [e.client_port for e in events] == [40003] and lost == 1  # since it started


def _mixed_packets() -> list[tuple[bytes, int]]:
    packets: list[tuple[bytes, int]] = []
    for sport in range(30000, 30060):
        packets.append((tcp_packet(CLIENT, sport, WEB_VIP, 80), SOURCE_POD))
        packets.append((tcp_packet(CLIENT, sport, WEB_VIP, 80, flags=dpkt.tcp.TH_ACK), SOURCE_POD))
        packets.append((udp_packet("198.51.100.7", sport, NODE_IP, 30080), SOURCE_OFF_CLUSTER))
        packets.append((tcp_packet("198.51.100.7", sport, NODE_IP, 30080), SOURCE_OFF_CLUSTER))
        packets.append((udp_packet(CLIENT, sport, EMPTY_VIP, 53), SOURCE_POD))
        packets.append((tcp_packet(CLIENT, sport, "10.96.0.99", 80), SOURCE_POD))
        packets.append((tcp_packet(CLIENT, sport, WEB_VIP, 80)[: 20 + sport % 20], SOURCE_POD))
    return packets


@pytest.mark.skipif("fast" not in DATAPATHS, reason="the fast path is not built")
def test_the_fast_path_traces_what_the_reference_traces() -> None:
    traces: dict[str, tuple[list[TraceEvent], int]] = {}
    for name in (REFERENCE, "fast"):
        datapath = new_datapath(name, clock=FakeClock(1000.0))
        datapath.apply(snapshot(frozenset({0, 1, 2}), external=True))
        datapath.trace_start(4096)
        for raw, source in _mixed_packets():
            datapath.process(raw, source)
        traces[name] = datapath.trace_take()
    assert len(traces[REFERENCE][0]) > 200
    assert traces["fast"] == traces[REFERENCE]


def test_each_service_port_counts_its_new_and_refused_flows(programmed: Datapath) -> None:
    for sport in range(40000, 40005):
        programmed.process(tcp_packet(CLIENT, sport, WEB_VIP, 80), SOURCE_POD)
    programmed.process(tcp_packet(CLIENT, 40000, NODE_IP, 30080), SOURCE_POD)  # same port
    programmed.process(tcp_packet(CLIENT, 40001, EMPTY_VIP, 80), SOURCE_POD)
    programmed.process(tcp_packet(CLIENT, 40002, EMPTY_VIP, 80), SOURCE_POD)
    programmed.process(udp_packet(CLIENT, 40001, EMPTY_VIP, 53), SOURCE_POD)
    programmed.process(tcp_packet(CLIENT, 40001, "10.96.0.99", 80), SOURCE_POD)  # no service
    assert programmed.service_port_counts() == {
        "d/empty:dns": {"no_local_endpoints": 1},
        "d/empty:http": {"no_endpoints": 2},
        "d/web:http": {"new_flow": 6},
    }
    # Its endpoints change: the service port is programmed anew, and keeps its counts.
    programmed.apply(snapshot(frozenset({3}), external=True))
    # A packet of a flow whose backend left (the offload path: one conntrack lost).
    programmed.process(tcp_packet(CLIENT, 40000, WEB_VIP, 80, flags=dpkt.tcp.TH_ACK), SOURCE_POD)
    programmed.process(tcp_packet(CLIENT, 40100, WEB_VIP, 80), SOURCE_POD)
    assert programmed.service_port_counts()["d/web:http"] == {"backend_removed": 1, "new_flow": 7}
    # Removed: its counts go with it.
    ports = snapshot(frozenset({3}), external=True).ports
    programmed.apply(Snapshot({k: p for k, p in ports.items() if p.name != "d/web:http"}))
    assert "d/web:http" not in programmed.service_port_counts()


def test_a_service_ports_counts_never_fall_while_it_exists(programmed: Datapath) -> None:
    """Its NodePort and external address go (the service becomes a plain ClusterIP): the
    flows they took still count for the service port, as Prometheus needs of a counter."""
    programmed.process(tcp_packet(CLIENT, 40000, WEB_VIP, 80), SOURCE_POD)
    programmed.process(tcp_packet("198.51.100.7", 40001, NODE_IP, 30080), SOURCE_OFF_CLUSTER)
    programmed.process(tcp_packet(CLIENT, 40002, NODE_IP, 30080), SOURCE_POD)  # its variant
    assert programmed.service_port_counts()["d/web:http"] == {"new_flow": 3}
    programmed.apply(snapshot(frozenset({0, 1, 2})))  # no external frontends
    assert programmed.service_port_counts()["d/web:http"] == {"new_flow": 3}
    programmed.process(tcp_packet(CLIENT, 40003, WEB_VIP, 80), SOURCE_POD)
    assert programmed.service_port_counts()["d/web:http"] == {"new_flow": 4}
    ports = snapshot(frozenset({0, 1, 2})).ports
    programmed.apply(Snapshot({k: p for k, p in ports.items() if p.name != "d/web:http"}))
    assert "d/web:http" not in programmed.service_port_counts()
    programmed.apply(snapshot(frozenset({0, 1, 2})))  # back: counted from zero
    assert "d/web:http" not in programmed.service_port_counts()
