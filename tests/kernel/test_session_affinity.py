"""sessionAffinity ClientIP with real TCP and UDP: one client's new flows stick to one backend."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from nfqproxy_lab.proxy import read_status
from nfqproxy_lab.topology import CLIENT_IP, DNS_PORT, HTTP_PORT, HTTP_TARGET, backend_ip
from nfqproxy_lab.traffic import http_split, udp_query
from tests.helpers.labs import STICKY_VIP as STICKY_VIP
from tests.helpers.labs import RunningLab, ask_proxy, sticky_manifest

pytestmark = pytest.mark.kernel


def wait_for_service_ports(running: RunningLab, count: int) -> None:
    deadline = time.monotonic() + 5
    while read_status(running.lab).get("service_ports") != count:
        assert time.monotonic() < deadline, read_status(running.lab).get("service_ports")
        time.sleep(0.05)


@pytest.fixture
def sticky_service(running_lab: RunningLab) -> Iterator[RunningLab]:
    """The shared lab with the sticky service added, and removed again afterwards."""
    before = read_status(running_lab.lab)["service_ports"]
    path = running_lab.lab.manifests_dir / "sticky.yaml"
    path.write_text(sticky_manifest())
    try:
        wait_for_service_ports(running_lab, before + 2)
        yield running_lab
    finally:
        path.unlink()
        wait_for_service_ports(running_lab, before)


def test_new_tcp_connections_from_one_client_all_reach_one_backend(
    sticky_service: RunningLab,
) -> None:
    answers = sticky_service.client.call(http_split, STICKY_VIP, HTTP_PORT, 40)
    assert sum(answers.values()) == 40 and len(answers) == 1, answers
    assert next(iter(answers)) in {"be1", "be2", "be3"}
    # explain names it for any port of this client: the entry, not Maglev's choice.
    sticky = f"{backend_ip(int(next(iter(answers)).removeprefix('be')))}:{HTTP_TARGET}"
    for port in (41001, 41002, 41003):
        lab = sticky_service.lab
        answer = ask_proxy(sticky_service, lab.node_ns, "explain", f"{CLIENT_IP}:{port}",
                           f"{STICKY_VIP}:{HTTP_PORT}")  # fmt: skip
        assert answer["backend"] == sticky and "session affinity" in answer["verdict"], answer
    # The node is another client: it is remembered separately, and sticks too.
    from_node = sticky_service.node.call(http_split, STICKY_VIP, HTTP_PORT, 20)
    assert sum(from_node.values()) == 20 and len(from_node) == 1, from_node
    deadline = time.monotonic() + 2  # the status file is rewritten twice a second
    while read_status(sticky_service.lab)["counters"].get("affinity_hit", 0) < 58:
        assert time.monotonic() < deadline, read_status(sticky_service.lab)["counters"]
        time.sleep(0.1)


def test_udp_queries_from_fresh_sockets_all_reach_one_backend(sticky_service: RunningLab) -> None:
    answers = Counter(
        sticky_service.client.call(udp_query, STICKY_VIP, DNS_PORT) for _ in range(30)
    )
    assert sum(answers.values()) == 30 and len(answers) == 1, answers
