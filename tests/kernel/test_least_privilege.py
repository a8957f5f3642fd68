"""The data path needs CAP_NET_ADMIN and CAP_NET_RAW and nothing else: it runs, serves,
and cleans up with only those two (setpriv drops the rest, as the DaemonSet does)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from nfqproxy_lab.proxy import start_proxy, wait_ready
from nfqproxy_lab.topology import HTTP_PORT, WEB_VIP
from nfqproxy_lab.traffic import http_split
from tests.helpers.labs import RunningLab, new_lab, nfqproxy_rules

pytestmark = pytest.mark.kernel
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
ONLY_NET = "-all,+net_admin,+net_raw"
# Bounding and inheritable sets cut to the two; uid 0 then gets exactly those at exec.
SETPRIV = ["setpriv", f"--bounding-set={ONLY_NET}", f"--inh-caps={ONLY_NET}", "--"]


def effective_capabilities(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff line")


def test_the_proxy_serves_and_cleans_up_with_only_net_admin_and_net_raw() -> None:
    running = RunningLab(new_lab())
    try:
        running.lab.up()
        running.proxy = start_proxy(running.lab, wrapper=SETPRIV)
        wait_ready(running.lab, running.proxy)
        assert effective_capabilities(running.proxy.pid) == (1 << CAP_NET_ADMIN) | (
            1 << CAP_NET_RAW
        )
        answers = running.client.call(http_split, WEB_VIP, HTTP_PORT, 30)
        assert sum(answers.values()) == 30 and set(answers) == {"be1", "be2", "be3"}, answers
        assert nfqproxy_rules(running.lab.node_ns)
        running.proxy.send_signal(signal.SIGTERM)
        assert running.proxy.wait(10) == 0
        assert nfqproxy_rules(running.lab.node_ns) == []
    finally:
        running.close()


def test_without_net_admin_the_proxy_stops_with_a_clear_error_and_leaves_nothing() -> None:
    running = RunningLab(new_lab())
    try:
        running.lab.up()
        only_raw = "-all,+net_raw"
        wrapper = ["setpriv", f"--bounding-set={only_raw}", f"--inh-caps={only_raw}", "--"]
        running.proxy = start_proxy(running.lab, wrapper=wrapper)
        assert running.proxy.wait(20) != 0
        log = (running.lab.dir / "proxy.log").read_text()
        assert "CAP_NET_ADMIN" in log and "Traceback" not in log, log[-2000:]
        assert nfqproxy_rules(running.lab.node_ns) == []
    finally:
        running.close()
