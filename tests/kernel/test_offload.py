"""What only the offload path does: the queue sees each connection's first packet and no
other, several queues decide in parallel, the mark bits outside the mask survive a verdict,
and session affinity survives kill -9. Every shared scenario runs on it elsewhere."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from nfqproxy_lab import netns
from nfqproxy_lab.proxy import proxy_command, read_status
from nfqproxy_lab.topology import HTTP_PORT, WEB_VIP
from nfqproxy_lab.traffic import http_get, http_split
from tests.helpers.datapaths import DATAPATHS
from tests.helpers.labs import (
    STICKY_VIP,
    RunningLab,
    lab_with_proxy,
    nfqproxy_rules,
    sticky_manifest,
)

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif("offload" not in DATAPATHS, reason="the offload path is not built"),
]


def queue_packets(running: RunningLab) -> int:
    return int(read_status(running.lab).get("queue", {}).get("packets", 0))


def status_after_write(running: RunningLab) -> None:
    time.sleep(0.6)  # the status file is rewritten twice a second


def iptables(running: RunningLab, *args: str) -> str:
    return netns.run(netns.exec_command(running.lab.node_ns, ["iptables", *args]))


def test_only_the_first_packet_of_each_connection_reaches_a_queue_of_several() -> None:
    with lab_with_proxy("--datapath", "offload", "--queues", "2") as running:
        bound = netns.run(
            netns.exec_command(running.lab.node_ns, ["cat", "/proc/net/netfilter/nfnetlink_queue"])
        )
        assert sorted(int(line.split()[0]) for line in bound.splitlines()) == [100, 101]
        status_after_write(running)
        before = queue_packets(running)
        split = running.client.call(http_split, WEB_VIP, HTTP_PORT, 60)
        status_after_write(running)
        decided = queue_packets(running) - before
        # 60 connections, each a SYN, a request, answers and a close: only the SYNs come.
        assert sum(split.values()) == 60 and len(split) == 3, split
        assert decided == 60, decided
        assert read_status(running.lab)["queue"]["queues"] == 2


def test_mark_bits_outside_the_mask_survive_the_verdict() -> None:
    kube_proxy_bit = "0x4000/0x4000"  # kube-proxy's masquerade bit, outside the default mask
    with lab_with_proxy("--datapath", "offload") as running:
        mark_all = ["-I", "PREROUTING", "1", "-j", "MARK", "--set-xmark", kube_proxy_bit]
        iptables(running, "-t", "mangle", *mark_all)
        # Counts forwarded packets that carry both that bit and our proxied bit (the
        # default mask's lowest, 0x1): a verdict of ours that kept the bit.
        iptables(running, "-I", "FORWARD", "1", "-m", "mark", "--mark", "0x4001/0x4001")
        assert running.client.call(http_get, WEB_VIP, HTTP_PORT) in ("be1", "be2", "be3")
        listing = iptables(running, "-L", "FORWARD", "1", "-v", "-x", "-n")
        assert int(listing.split()[0]) >= 1, listing
        entries = netns.run(
            netns.exec_command(running.lab.node_ns, ["conntrack", "-L", "-d", WEB_VIP]),
            check=False,
        )
        marks = [int(f.split("=")[1]) for f in entries.split() if f.startswith("mark=")]
        # The connmark keeps only the mask's bits: ours.
        assert marks and all(m & 0x4000 == 0 and m & 1 for m in marks), entries


def test_session_affinity_survives_kill_9() -> None:
    with lab_with_proxy("--datapath", "offload") as running:
        ports = read_status(running.lab)["service_ports"]
        (running.lab.manifests_dir / "sticky.yaml").write_text(sticky_manifest())
        deadline = time.monotonic() + 5
        while read_status(running.lab).get("service_ports", 0) < ports + 2:  # TCP and UDP
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before: Counter[str] = running.client.call(http_split, STICKY_VIP, HTTP_PORT, 10)
        assert len(before) == 1 and set(before) <= {"be1", "be2", "be3"}, before
        assert running.proxy is not None
        os.kill(running.proxy.pid, signal.SIGKILL)
        running.proxy.wait(5)
        # The closed connections stay in conntrack (TIME_WAIT) with their backend's mark:
        # the new process reads the client's backend back from them before any new one.
        running.start_proxy("--datapath", "offload")
        status_after_write(running)
        assert read_status(running.lab)["session_affinity"]["clients"] >= 1, (
            running.lab.dir / "proxy.log"
        ).read_text()[-2000:]
        after: Counter[str] = running.client.call(http_split, STICKY_VIP, HTTP_PORT, 10)
        assert after.keys() == before.keys(), (before, after)


def nft_tables(running: RunningLab) -> str:
    return netns.run(netns.exec_command(running.lab.node_ns, ["nft", "list", "tables"]))


def test_sigterm_removes_the_map_and_cleanup_removes_what_kill_9_left() -> None:
    with lab_with_proxy("--datapath", "offload") as running:
        assert "table ip nfqproxy" in nft_tables(running)
        assert running.proxy is not None
        running.proxy.send_signal(signal.SIGTERM)
        assert running.proxy.wait(10) == 0
        assert "nfqproxy" not in nft_tables(running) and nfqproxy_rules(running.lab.node_ns) == []
        second = running.start_proxy("--datapath", "offload")
        os.kill(second.pid, signal.SIGKILL)
        second.wait(10)
        assert "table ip nfqproxy" in nft_tables(running)  # a killed proxy cannot clean up
        netns.run(netns.exec_command(running.lab.node_ns, [*proxy_command(), "cleanup"]))
        assert "nfqproxy" not in nft_tables(running) and nfqproxy_rules(running.lab.node_ns) == []
