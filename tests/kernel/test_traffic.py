"""Real TCP and UDP through the proxy, from the client namespace and the node itself."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from nfqproxy_lab.netns import NetnsThread
from nfqproxy_lab.servers import blob
from nfqproxy_lab.topology import DNS_PORT, EMPTY_VIP, HTTP_PORT, WEB_VIP
from nfqproxy_lab.traffic import (
    http_download_digest,
    http_split,
    http_upload_digest,
    udp_query,
)
from tests.helpers.labs import RunningLab

pytestmark = pytest.mark.kernel


def test_300_new_http_connections_are_all_answered_and_split_across_3_backends(
    running_lab: RunningLab,
) -> None:
    answers = running_lab.client.call(http_split, WEB_VIP, HTTP_PORT, 300)
    assert sum(answers.values()) == 300
    assert set(answers) == {"be1", "be2", "be3"}, answers
    for name, count in answers.items():
        assert 0.20 <= count / 300 <= 0.47, f"{name} got {count} of 300"


def test_a_connected_udp_socket_gets_every_answer_from_the_vip(running_lab: RunningLab) -> None:
    answers = [running_lab.client.call(udp_query, WEB_VIP, DNS_PORT) for _ in range(50)]
    assert set(answers) <= {"be1", "be2", "be3"}
    assert len(answers) == 50


def test_a_udp_datagram_larger_than_the_mtu_is_reassembled_proxied_and_answered(
    running_lab: RunningLab,
) -> None:
    # 3000 bytes over a 1500-byte link: the client fragments, the node's conntrack
    # reassembles before the queue, and the forward path fragments again.
    answer = running_lab.client.call(udp_query, WEB_VIP, DNS_PORT, 2.0, b"x" * 3000)
    assert answer in {"be1", "be2", "be3"}


def test_datagrams_of_every_length_modulo_4_are_proxied_and_answered(
    running_lab: RunningLab,
) -> None:
    # libnfnetlink pads a verdict's payload to 4 bytes by reading past the caller's
    # buffer; over 512 bytes Python's buffers come from malloc, where `make asan` sees it
    # (scripts/asan.supp explains why that report is suppressed, not fixed, here).
    for size in (1001, 1002, 1003, 1004):
        answer = running_lab.client.call(udp_query, WEB_VIP, DNS_PORT, 2.0, b"x" * size)
        assert answer in {"be1", "be2", "be3"}, size


def test_the_node_itself_reaches_the_vip_over_tcp_and_udp(running_lab: RunningLab) -> None:
    answers = running_lab.node.call(http_split, WEB_VIP, HTTP_PORT, 30)
    assert sum(answers.values()) == 30 and set(answers) <= {"be1", "be2", "be3"}, answers
    assert running_lab.node.call(udp_query, WEB_VIP, DNS_PORT) in {"be1", "be2", "be3"}


def _connect_error(host: str, port: int) -> tuple[str, float]:
    started = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "connected", time.monotonic() - started
    except OSError as exc:
        return type(exc).__name__, time.monotonic() - started


def _udp_error(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.connect((host, port))
        sock.send(b"anyone?")
        try:
            sock.recv(100)
            return "answered"
        except OSError as exc:
            return type(exc).__name__


@pytest.mark.parametrize("where", ["client", "node"])
def test_a_service_without_endpoints_refuses_tcp_at_once_and_udp_with_port_unreachable(
    running_lab: RunningLab,
    where: str,
) -> None:
    thread = running_lab.client if where == "client" else running_lab.node
    outcome, seconds = thread.call(_connect_error, EMPTY_VIP, HTTP_PORT)
    assert outcome == "ConnectionRefusedError" and seconds < 1.0, (outcome, seconds)
    # ECONNREFUSED on a connected UDP socket is how Linux reports ICMP port unreachable.
    assert thread.call(_udp_error, EMPTY_VIP, DNS_PORT) == "ConnectionRefusedError"


def test_a_port_the_vip_does_not_serve_and_an_unallocated_vip_are_refused(
    running_lab: RunningLab,
) -> None:
    for host, port in ((WEB_VIP, 443), ("10.96.7.7", 80)):
        outcome, seconds = running_lab.client.call(_connect_error, host, port)
        assert outcome == "ConnectionRefusedError" and seconds < 1.0, (host, port, outcome)


def test_a_backend_reaching_its_own_service_is_answered_by_itself_too(
    running_lab: RunningLab,
) -> None:
    # Hairpin: some of be1's flows land on be1, which must see the answer come from the VIP.
    with NetnsThread(running_lab.lab.backend_ns(1)) as backend:
        answers = backend.call(http_split, WEB_VIP, HTTP_PORT, 60)
    assert sum(answers.values()) == 60 and "be1" in answers, answers
    assert set(answers) <= {"be1", "be2", "be3"}, answers


def test_20_mb_each_way_arrive_intact_through_the_vip(running_lab: RunningLab) -> None:
    # Bulk TCP travels as 64 KB GSO packets with partial checksums: the fast path must
    # complete every checksum, the reference path gets them segmented by the kernel.
    size = 20 * 1024 * 1024
    got = running_lab.client.call(http_download_digest, WEB_VIP, HTTP_PORT, size)
    assert got == hashlib.sha256(blob(size)).hexdigest()
    body = blob(size + 1)
    answer = running_lab.client.call(http_upload_digest, WEB_VIP, HTTP_PORT, body)
    assert answer == hashlib.sha256(body).hexdigest()


def test_the_proxy_runs_the_sanitized_build_under_make_asan(running_lab: RunningLab) -> None:
    if os.environ.get("NFQPROXY_EXPECT_ASAN") != "1":
        pytest.skip("only under make asan")
    assert running_lab.proxy is not None
    maps = Path(f"/proc/{running_lab.proxy.pid}/maps").read_text()
    assert "libasan" in maps and "build/asan/nfqproxy/_fastpath" in maps
