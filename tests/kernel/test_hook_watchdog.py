"""Rules flushed by someone else come back within one sync period; other rules stay."""

from __future__ import annotations

import time

import pytest

from nfqproxy_lab import netns
from nfqproxy_lab.topology import HTTP_PORT, WEB_VIP
from nfqproxy_lab.traffic import http_split
from tests.helpers.labs import lab_with_proxy

pytestmark = pytest.mark.kernel
SYNC_PERIOD = 2.0
OTHER = ["-s", "192.0.2.1/32", "-m", "comment", "--comment", "other software", "-j", "ACCEPT"]


def iptables(namespace: str, *args: str) -> str:
    return netns.run(netns.exec_command(namespace, ["iptables", "-w", "5", *args]))


def test_flushed_hook_rules_are_restored_within_one_sync_period_beside_other_rules() -> None:
    with lab_with_proxy("--sync-period", str(SYNC_PERIOD)) as running:
        node = running.lab.node_ns
        assert sum(running.client.call(http_split, WEB_VIP, HTTP_PORT, 6).values()) == 6
        iptables(node, "-t", "raw", "-F")  # our jumps and our chain's rule go with it
        iptables(node, "-t", "mangle", "-F", "NFQPROXY-REPLIES")
        flushed = time.monotonic()
        iptables(node, "-t", "raw", "-A", "PREROUTING", *OTHER)
        while "NFQPROXY-SERVICES" not in iptables(node, "-t", "raw", "-S", "PREROUTING"):
            assert time.monotonic() - flushed < SYNC_PERIOD, "not restored within a sync period"
            time.sleep(0.05)
        deadline = flushed + SYNC_PERIOD
        while iptables(node, "-t", "mangle", "-S", "NFQPROXY-REPLIES").count("-A ") != 1:
            assert time.monotonic() < deadline, "the reply rule was not restored"
            time.sleep(0.05)
        answers = running.client.call(http_split, WEB_VIP, HTTP_PORT, 30, 1.0)
        assert sum(answers.values()) == 30 and set(answers) <= {"be1", "be2", "be3"}, answers
        assert "other software" in iptables(node, "-t", "raw", "-S", "PREROUTING")
        log = (running.lab.dir / "proxy.log").read_text()
        assert "hook rules missing" in log and "raw PREROUTING -> NFQPROXY-SERVICES" in log
