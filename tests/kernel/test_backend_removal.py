"""Removing a backend: its TCP flows are reset at the client's next packet while every
other connection carries on; UDP flows move on with their next datagram, and the kernel's
conntrack holds no stale entry that keeps sending them to the removed backend (the
long-standing kube-proxy bug where a UDP client keeps its source port and is
black-holed until the entry expires)."""

from __future__ import annotations

import http.client
import socket
import time

import pytest

from nfqproxy_lab import netns
from nfqproxy_lab.proxy import read_status
from nfqproxy_lab.topology import CLIENT_IP, DNS_PORT, HTTP_PORT, WEB_VIP, backend_ip
from nfqproxy_lab.traffic import KeepAlive
from tests.helpers.datapaths import datapath_params
from tests.helpers.labs import RunningLab, lab_with_proxy, wait_for_sync_after

pytestmark = pytest.mark.kernel
CLIENT_PORT = 40053


class FixedPortClient:
    """One UDP socket on a fixed source port, as a resolver or a game client keeps."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", CLIENT_PORT))
        self.sock.connect((WEB_VIP, DNS_PORT))
        self.sock.settimeout(1.0)

    def ask(self) -> str:
        self.sock.send(b"who?")
        try:
            return self.sock.recv(2048).decode()
        except TimeoutError:
            return "timeout"

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("datapath", datapath_params())
def test_a_udp_client_on_a_fixed_port_moves_off_a_removed_backend_at_once(datapath: str) -> None:
    with lab_with_proxy("--datapath", datapath) as running:
        moved_through(running)


def moved_through(running: RunningLab) -> None:
    lab, client = running.lab, running.client
    udp = client.call(FixedPortClient)
    first = client.call(udp.ask)
    assert first in ("be1", "be2", "be3")
    assert all(client.call(udp.ask) == first for _ in range(5))  # one flow, one backend
    removed = int(first[2:])
    syncs = read_status(lab)["syncs"]
    lab.write_manifests([i for i in (1, 2, 3) if i != removed])
    wait_for_sync_after(lab, syncs)
    answers = [client.call(udp.ask) for _ in range(10)]
    client.call(udp.close)
    assert all(a in ("be1", "be2", "be3") and a != first for a in answers), answers
    assert len(set(answers)) == 1, answers  # re-steered once, then pinned again
    # The kernel tracks the flow to its new backend; nothing sends it to the old one.
    entries = netns.run(
        netns.exec_command(
            lab.node_ns,
            ["conntrack", "-L", "-p", "udp", "--orig-src", CLIENT_IP, "--sport", str(CLIENT_PORT)],
        ),
        check=False,
    )
    moved_to = backend_ip(int(answers[0][2:]))
    # The paths that rewrite every packet show the backend as the original destination;
    # the offload path's conntrack NAT shows it as the reply's source.
    assert f"dst={moved_to}" in entries or f"src={moved_to} dst={CLIENT_IP}" in entries, entries


def open_connections(count: int) -> list[KeepAlive]:
    return [KeepAlive(WEB_VIP, HTTP_PORT) for _ in range(count)]


def ask_each(connections: list[KeepAlive]) -> list[tuple[str, float]]:
    """Each connection's next answer (or error) and how long it took."""
    answers = []
    for connection in connections:
        started = time.monotonic()
        try:
            answer = connection.get()
        except (OSError, http.client.HTTPException) as exc:
            answer = f"error: {type(exc).__name__}"
        answers.append((answer, time.monotonic() - started))
        connection.close()
    return answers


@pytest.mark.parametrize("datapath", datapath_params())
def test_removing_a_backend_resets_its_tcp_flows_at_once_and_spares_the_rest(
    datapath: str,
) -> None:
    with lab_with_proxy("--datapath", datapath) as running:
        lab, client = running.lab, running.client
        removed = "be2"
        connections: list[KeepAlive] = []
        pinned: list[str] = []
        while pinned.count(removed) < 10 or len(pinned) - pinned.count(removed) < 100:
            assert len(pinned) < 300, "Maglev spread the connections strangely"
            (connection,) = client.call(open_connections, 1)
            connections.append(connection)
            pinned.append(client.call(connection.get))
        syncs = read_status(lab)["syncs"]
        lab.write_manifests([1, 3])
        wait_for_sync_after(lab, syncs)
        answers = client.call(ask_each, connections)
    on_removed = [a for a, p in zip(answers, pinned, strict=True) if p == removed]
    survivors = [(a, p) for a, p in zip(answers, pinned, strict=True) if p != removed]
    assert len(on_removed) >= 10 and len(survivors) >= 100
    broken = [(a, p) for (a, _), p in survivors if a != p]
    assert broken == [], broken  # 0 of 100 (or more) connections to surviving backends
    assert all(a == "error: ConnectionResetError" and took < 0.5 for a, took in on_removed), (
        on_removed
    )
