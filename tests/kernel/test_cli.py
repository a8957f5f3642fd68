"""The command line as a user runs it: lab up/down, demo (also interrupted), legacy iptables."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from nfqproxy_lab import netns
from nfqproxy_lab.proxy import proxy_command, read_status
from nfqproxy_lab.topology import HTTP_PORT, WEB_VIP, Lab, all_labs
from nfqproxy_lab.traffic import http_split
from tests.helpers.labs import RunningLab, new_lab

pytestmark = pytest.mark.kernel


def nfqproxy(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*proxy_command(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_lab_up_builds_the_namespaces_and_lab_down_removes_them() -> None:
    name = new_lab().name
    try:
        up = nfqproxy("lab", "up", "--name", name, "--backends", "2")
        assert up.returncode == 0, up.stderr
        expected = {f"{name}-{part}" for part in ("client", "node", "uplink", "be1", "be2")}
        assert expected <= set(netns.names())
        again = nfqproxy("lab", "up", "--name", name)
        assert again.returncode == 1 and "already exists" in again.stderr
    finally:
        down = nfqproxy("lab", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert not [n for n in netns.names() if n.startswith(f"{name}-")]


def _demo_namespaces() -> list[str]:
    return [n for n in netns.names() if n.startswith("nfqdemo-")]


def test_the_demo_shows_the_split_and_an_endpoint_change_then_leaves_nothing_behind() -> None:
    demo = nfqproxy("demo", timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "Split across backends: 300 new connections" in out
    assert all(f"  be{i} " in out for i in (1, 2, 3))
    assert "connection table:" in out and "tcp/" in out
    assert "still answers from: be" in out
    line = next(x for x in out.splitlines() if "still answers from" in x)
    now, was = line.split("from: ")[1].split(" (was ")
    assert now == was.rstrip(")")
    # The inspection part: explain's backend is the one the trace shows and that answers.
    named = next(x for x in out.splitlines() if x.startswith("verdict:")).split("DNAT to ")[1]
    traced = next(x for x in out.splitlines() if " new_flow " in x)
    answered = next(x for x in out.splitlines() if "was answered by" in x)
    assert traced.split()[-1] == named and f"({named.split(':')[0]})" in answered, out
    assert "nfqdemo" not in all_labs() and _demo_namespaces() == []


def test_an_interrupted_demo_still_tears_everything_down() -> None:
    demo = subprocess.Popen([*proxy_command(), "demo"], stdout=subprocess.PIPE, text=True)
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if "is running in" in line:
                break
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 130
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
            Lab.load("nfqdemo").down()
    assert "nfqdemo" not in all_labs() and _demo_namespaces() == []


def test_a_new_service_in_the_manifests_answers_within_1_s(fresh_lab: RunningLab) -> None:
    lab = fresh_lab.lab
    # Syncs keep --min-sync-period (1 s) apart, as kube-proxy's do: start from a proxy
    # whose last sync is at least that old, so the change alone is timed.
    while time.time() - read_status(lab)["last_sync"] < 1.0:
        time.sleep(0.05)
    extra = lab.manifests_dir / "extra.yaml"
    extra.write_text(
        (lab.manifests_dir / "services.yaml")
        .read_text()
        .replace("10.96.0.10", "10.96.0.30")
        .replace("name: web", "name: web2")
        .replace("name: empty", "name: empty2")
        .replace("10.96.0.20", "10.96.0.40")
        + "---\n"
        + (lab.manifests_dir / "endpointslices.yaml")
        .read_text()
        .replace("service-name: web", "service-name: web2")
        .replace("name: web-lab", "name: web2-lab")
    )
    written = time.monotonic()
    while True:
        answers = fresh_lab.client.call(http_split, "10.96.0.30", HTTP_PORT, 1, 0.2)
        if not any(k.startswith("error") for k in answers):
            break
        assert time.monotonic() - written < 1.0, answers
    assert time.monotonic() - written < 1.0


def test_other_softwares_rules_survive_install_and_removal(fresh_lab: RunningLab) -> None:
    lab = fresh_lab.lab
    in_node = netns.exec_command
    foreign = ["-s", "192.0.2.77/32", "-m", "comment", "--comment", "someone-else", "-j", "ACCEPT"]
    for table, chain in (("raw", "PREROUTING"), ("filter", "FORWARD"), ("nat", "POSTROUTING")):
        netns.run(in_node(lab.node_ns, ["iptables", "-t", table, "-A", chain, *foreign]))
    assert fresh_lab.proxy is not None
    fresh_lab.proxy.send_signal(signal.SIGTERM)
    fresh_lab.proxy.wait(10)
    fresh_lab.start_proxy()
    fresh_lab.proxy.send_signal(signal.SIGINT)  # Ctrl-C cleans up as SIGTERM does
    assert fresh_lab.proxy.wait(10) == 0
    dump = netns.run(in_node(lab.node_ns, ["iptables-save"]))
    assert dump.count("someone-else") == 3
    assert "NFQPROXY" not in dump


def test_the_legacy_iptables_backend_works_and_cleanup_finds_its_leftovers(lab: Lab) -> None:
    running = RunningLab(lab)
    try:
        proxy = running.start_proxy("--iptables", "iptables-legacy")
        legacy = netns.run(netns.exec_command(lab.node_ns, ["iptables-legacy-save"]))
        assert "NFQPROXY-SERVICES" in legacy
        answers = running.client.call(http_split, WEB_VIP, HTTP_PORT, 30)
        assert sum(answers.values()) == 30 and set(answers) == {"be1", "be2", "be3"}, answers
        os.kill(proxy.pid, signal.SIGKILL)
        proxy.wait(10)
        netns.run(netns.exec_command(lab.node_ns, [*proxy_command(), "cleanup"]))
        assert "NFQPROXY" not in netns.run(
            netns.exec_command(lab.node_ns, ["iptables-legacy-save"])
        )
    finally:
        running.client.close()
        running.node.close()


def test_lab_down_stops_every_process_the_lab_started_whatever_it_runs() -> None:
    lab = new_lab(1)
    try:
        lab.up()
        sleeper = lab.start_process(
            "sleeper", netns.exec_command(lab.backend_ns(1), ["sleep", "300"])
        )
    finally:
        lab.down()
    assert sleeper.wait(5) is not None  # not an nfqproxy command line, stopped all the same
