"""The offload path decides first packets as the fast path does: the same backend for the
same flow (Maglev, session affinity), the same rejects and drops; only the way the decision
reaches the kernel differs (a mark, not a rewritten packet). Its backend ids and mark
layout are checked here too; tests/kernel runs every scenario on it for real."""

from __future__ import annotations

from ipaddress import ip_address

import dpkt
import pytest

from nfqproxy.datapath.compiled import compiled_available
from nfqproxy.datapath.frontends import Frontend
from nfqproxy.datapath.marks import (
    SOURCE_NODE,
    SOURCE_OFF_CLUSTER,
    SOURCE_POD,
    MarkLayout,
    parse_mask,
)
from nfqproxy.datapath.offload.backends import BackendIds, IdPlan
from nfqproxy.datapath.verdicts import Action
from nfqproxy.model import Backend, ServicePort
from nfqproxy_lab.packets import tcp_packet, udp_packet
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import new_datapath
from tests.helpers.snapshots import EMPTY_VIP, EXTERNAL_IP, NODE_IP, WEB_VIP, snapshot

pytestmark = pytest.mark.skipif(not compiled_available(), reason="the extension is not built")

CLIENTS = ["10.244.1.2", "10.244.1.3", "10.244.2.9", "10.244.11.2"]  # the last is a backend


def first_packets() -> list[tuple[bytes, int]]:
    """(packet, its mark's source bits): ClusterIP traffic, and traffic to the external
    frontends from each kind of source."""
    packets = []
    for client in CLIENTS:
        for sport in range(40000, 40030):
            packets.append((tcp_packet(client, sport, WEB_VIP, 80, dpkt.tcp.TH_SYN, b""), 0))
            packets.append((udp_packet(client, sport, WEB_VIP, 53, b"q"), 0))
            # A flow of its own (the fast path keeps flows) for each source and frontend.
            sources = (SOURCE_POD, SOURCE_OFF_CLUSTER, SOURCE_NODE | SOURCE_OFF_CLUSTER)
            for k, source in enumerate(sources, 1):
                for host, port in ((NODE_IP, 30080), (EXTERNAL_IP, 80), (WEB_VIP, 80)):
                    syn = tcp_packet(client, sport + 1000 * k, host, port, dpkt.tcp.TH_SYN, b"")
                    packets.append((syn, source))
    for raw in (
        tcp_packet(CLIENTS[0], 1, EMPTY_VIP, 80, dpkt.tcp.TH_SYN, b""),
        udp_packet(CLIENTS[0], 1, EMPTY_VIP, 53, b"q"),
        tcp_packet(CLIENTS[0], 1, WEB_VIP, 443, dpkt.tcp.TH_SYN, b""),
        tcp_packet(CLIENTS[0], 1, "10.96.9.9", 80, dpkt.tcp.TH_SYN, b""),
    ):
        packets.append((raw, 0))
    return packets


@pytest.mark.parametrize("affinity", [0, 600])
def test_offload_chooses_the_backend_the_fast_path_chooses_for_every_first_packet(
    affinity: int,
) -> None:
    clock = FakeClock()
    fast = new_datapath("fast", clock=clock)
    offload = new_datapath("offload", clock=clock)
    for datapath in (fast, offload):
        datapath.apply(snapshot(frozenset({0, 1, 2, 3}), affinity, external=True))
    names = {i: backend for (_, backend), i in offload.ids.ids.items()}  # type: ignore[attr-defined]
    for raw, source in first_packets():
        expected = fast.process(raw, source)
        # One decision, as the queue worker makes it: the verdict and the backend's mark.
        action, reason, mark, _, masquerade = offload.core.decide_first(raw, clock(), source)  # type: ignore[attr-defined]
        assert (Action(action), reason, masquerade) == (
            expected.action,
            expected.reason,
            expected.masquerade,
        )
        if expected.action is Action.ACCEPT:
            assert expected.payload is not None
            ip = dpkt.ip.IP(expected.payload)
            backend_id = offload.ids.marks.backend_id(mark)  # type: ignore[attr-defined]
            assert names[backend_id] == (ip.dst, ip.data.dport)


def test_a_tcp_packet_that_is_not_a_syn_is_reset_conntrack_no_longer_has_its_flow() -> None:
    offload = new_datapath("offload")
    offload.apply(snapshot(frozenset({0, 1})))
    ack = tcp_packet(CLIENTS[0], 40000, WEB_VIP, 80, dpkt.tcp.TH_ACK, b"data")
    verdict = offload.process(ack)
    assert (verdict.action, verdict.reason) == (Action.REJECT, "backend_removed")
    syn = tcp_packet(CLIENTS[0], 40001, WEB_VIP, 80, dpkt.tcp.TH_SYN, b"")
    accepted = offload.process(syn)
    # The packet goes back as it came: the kernel's DNAT map rewrites it, not the worker.
    assert (accepted.action, accepted.payload, accepted.proxied) == (Action.ACCEPT, None, True)


def test_backends_keep_their_ids_while_present_and_ids_are_reused_only_after_release() -> None:
    offload = new_datapath("offload")
    offload.apply(snapshot(frozenset({0, 1, 2})))
    ids = dict(offload.ids.ids)  # type: ignore[attr-defined]
    assert len(ids) == 6 and len(set(ids.values())) == 6  # 3 backends x (TCP, UDP)
    offload.apply(snapshot(frozenset({0, 1})))
    kept = offload.ids.ids  # type: ignore[attr-defined]
    assert {a: i for a, i in ids.items() if a in kept} == kept
    offload.apply(snapshot(frozenset({0, 1, 3})))
    assert set(offload.ids.ids.values()) == set(ids.values())  # type: ignore[attr-defined]


def test_backend_ids_know_each_owner_and_reuse_released_ids_oldest_first() -> None:
    ids = BackendIds(MarkLayout())
    key = (b"\x0a\x60\x00\x0a", 6, 80)
    backends = [(bytes([10, 244, i, 2]), 8080) for i in range(1, 6)]

    def frontend(chosen: list[int]) -> Frontend:
        port = ServicePort(
            "d/web:http",
            ip_address("10.96.0.10"),
            "TCP",
            80,
            tuple(Backend(ip_address(backends[i][0]), 8080) for i in chosen),
        )
        return Frontend.from_model(port, 0)

    def change(old: list[int] | None, new: list[int]) -> IdPlan:
        plan = ids.plan({key: frontend(old) if old is not None else None}, {key: frontend(new)})
        ids.commit(plan)
        return plan

    change(None, [0, 1, 2])
    assert ids.owners == {i: a for a, i in ids.ids.items()} and len(ids.owners) == 3
    gone = change([0, 1, 2], [0])
    assert sorted(gone.leaving.values()) == [2, 3]
    assert ids.owners == {1: (key, backends[0])}
    # Not released yet (their connections may still carry them): never given again.
    assert not ids.in_use(2) and not ids.in_use(3)
    assert list(change([0], [0, 3]).added.values()) == [4]
    ids.release([3, 2])
    added = change([0, 3], [0, 3, 1, 4])
    assert sorted(added.added.values()) == [2, 3]  # the released ones, not 5
    assert ids.owners == {i: a for a, i in ids.ids.items()} and len(ids.owners) == 4
    # Ids adopted from a previous process are taken until placed or released unplaced.
    adopting = BackendIds(MarkLayout())
    adopting.adopt({((key, backends[4])): 7})
    assert adopting.in_use(7)
    assert adopting.release_unplaced() == {(key, backends[4]): 7}
    assert not adopting.in_use(7)


def test_a_mark_layout_spreads_ids_over_any_mask_and_reads_them_back() -> None:
    layout = MarkLayout(0xFCF0)
    assert (layout.proxied, layout.reject, layout.masquerade) == (0x10, 0x20, 0x40)
    assert (layout.source_pod, layout.source_off_cluster, layout.source_node) == (
        0x80,
        0x400,
        0x800,
    )
    assert layout.id_mask == 0xF000 and layout.max_backend_id == 15
    for backend_id in range(1, 16):
        mark = layout.backend_mark(backend_id)
        assert mark & ~layout.id_mask == 0 and layout.backend_id(mark) == backend_id
    with pytest.raises(ValueError, match="outside 1-15"):
        layout.backend_mark(16)
    assert layout.source_bits(0x80 | 0x800 | 0x1) == 1 | 4


@pytest.mark.parametrize(
    ("text", "message"),
    [("0x7", "needs at least 10"), ("banana", "not a number"), ("0x1ffffffff", "32-bit")],
)
def test_a_bad_mark_mask_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mask(text)


def test_the_default_mask_keeps_clear_of_kube_proxy_and_cilium() -> None:
    layout = MarkLayout()
    assert layout.mask & (0x4000 | 0x8000 | 0x0F00) == 0
    assert layout.max_backend_id >= 100_000  # 10k services x 3 endpoints x 2 protocols, and more


@pytest.mark.parametrize("name", ["fast", "offload"])
def test_flows_decided_per_backend_are_counted_and_kept_while_the_backend_stays(
    name: str,
) -> None:
    datapath = new_datapath(name)
    datapath.apply(snapshot(frozenset({0, 1, 2})))
    syns = [tcp_packet(CLIENTS[0], port, WEB_VIP, 80, dpkt.tcp.TH_SYN, b"") for port in range(60)]
    for raw in syns:
        datapath.process(raw)
    tables = datapath.tables  # type: ignore[attr-defined]
    decided = {backend: n for (key, backend), n in tables.decided().items() if key[1] == 6}
    assert sum(decided.values()) == 60 and len(decided) == 3, decided
    datapath.apply(snapshot(frozenset({0, 1})))  # backend 2 leaves: its count goes with it
    kept = {backend: n for (key, backend), n in tables.decided().items() if key[1] == 6}
    assert kept == {b: n for b, n in decided.items() if b in kept} and len(kept) == 2
    rows = datapath.status()["decided_by_backend"]
    assert isinstance(rows, dict) and sum(v for k, v in rows.items() if ":http" in k) == sum(
        kept.values()
    )
