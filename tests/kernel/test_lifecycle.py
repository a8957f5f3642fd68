"""Manifest changes, bad manifests, and the proxy's rules across start, stop and crash."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml

from nfqproxy import ipsets
from nfqproxy.hooks import HookConfig, chain_rules, jumps
from nfqproxy_lab import netns
from nfqproxy_lab.proxy import proxy_command, read_status, run_command
from nfqproxy_lab.topology import (
    CLUSTER_CIDR,
    HTTP_PORT,
    HTTP_TARGET,
    SERVICE_CIDR,
    WEB_VIP,
    backend_ip,
)
from nfqproxy_lab.traffic import KeepAlive, http_get, http_split
from tests.helpers.labs import RunningLab, nfqproxy_rules
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.kernel


def test_2_s_after_an_endpoint_is_removed_no_new_connection_reaches_it_and_open_ones_carry_on(
    fresh_lab: RunningLab,
) -> None:
    client = fresh_lab.client
    keep = client.call(KeepAlive, WEB_VIP, HTTP_PORT)
    pinned = client.call(keep.get)
    removed = next(name for name in ("be1", "be2", "be3") if name != pinned)
    fresh_lab.lab.write_manifests([i for i in (1, 2, 3) if f"be{i}" != removed])
    changed_at = time.monotonic()
    late: Counter[str] = Counter()
    while time.monotonic() - changed_at < 4.0:
        answer = client.call(http_get, WEB_VIP, HTTP_PORT)
        if time.monotonic() - changed_at > 2.0:
            late[answer] += 1
        assert client.call(keep.get) == pinned
    assert late and removed not in late, late
    client.call(keep.close)


def test_sigterm_removes_every_rule_and_kill_9_leftovers_go_with_cleanup(
    fresh_lab: RunningLab,
) -> None:
    lab, proxy = fresh_lab.lab, fresh_lab.proxy
    assert proxy is not None
    installed = nfqproxy_rules(lab.node_ns)
    every_packet = fresh_lab.sees_every_packet  # the default data path's rule set
    config = HookConfig(
        (IPv4Network(SERVICE_CIDR),),
        100,
        first_packets_only=not every_packet,
        cluster_cidrs=(IPv4Network(CLUSTER_CIDR),),  # as the lab runs it
    )
    rules = chain_rules(config)
    expected = len(rules) + len(jumps(config)) + sum(map(len, rules.values()))
    assert len(installed) == expected == (31 if every_packet else 27), installed
    assert nfqproxy_sets(lab.node_ns) == sorted(ipsets.SET_TYPES)
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(10) == 0
    assert nfqproxy_rules(lab.node_ns) == [] and nfqproxy_sets(lab.node_ns) == []

    second = fresh_lab.start_proxy()
    assert nfqproxy_rules(lab.node_ns) == installed
    os.kill(second.pid, signal.SIGKILL)
    second.wait(10)
    assert nfqproxy_rules(lab.node_ns) == installed  # a killed proxy cannot clean up
    netns.run(netns.exec_command(lab.node_ns, [*proxy_command(), "cleanup"]))
    assert nfqproxy_rules(lab.node_ns) == [] and nfqproxy_sets(lab.node_ns) == []


def nfqproxy_sets(namespace: str) -> list[str]:
    listed = netns.run(netns.exec_command(namespace, ["ipset", "list", "-n"]))
    return sorted(name for name in listed.split() if name.startswith("nfqproxy-"))


def cleanup_daemonset_command() -> list[str]:
    """What deploy/cleanup.yaml runs on each node."""
    documents = yaml.safe_load_all((ROOT / "deploy" / "cleanup.yaml").read_text())
    daemonset = next(d for d in documents if d and d["kind"] == "DaemonSet")
    (container,) = daemonset["spec"]["template"]["spec"]["initContainers"]
    return [*proxy_command(), *container["args"]]


def test_a_deleted_daemonset_drops_service_traffic_until_the_cleanup_daemonset_runs(
    fresh_lab: RunningLab,
) -> None:
    """The DaemonSet keeps its hooks on exit. Deleted for good, it leaves them with no one
    reading the queue, and kube-proxy, reinstalled beside them, never sees a packet; the
    cleanup DaemonSet's command hands the traffic back."""
    lab, proxy = fresh_lab.lab, fresh_lab.proxy
    assert proxy is not None
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(10) == 0
    proxy = fresh_lab.start_proxy("--keep-hooks-on-exit")
    kube_proxy_dnat = ["-d", WEB_VIP, "-p", "tcp", "--dport", str(HTTP_PORT), "-j", "DNAT"]
    netns.run(
        netns.exec_command(
            lab.node_ns,
            [
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                *kube_proxy_dnat,
                "--to-destination",
                f"{backend_ip(1)}:{HTTP_TARGET}",
            ],
        )
    )
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(10) == 0
    assert nfqproxy_rules(lab.node_ns) != []

    def answer() -> str:
        try:
            return http_get(WEB_VIP, HTTP_PORT, 1.5)
        except OSError as exc:
            return type(exc).__name__

    assert fresh_lab.client.call(answer) == "TimeoutError"  # dropped at the queue
    netns.run(netns.exec_command(lab.node_ns, cleanup_daemonset_command()))
    assert nfqproxy_rules(lab.node_ns) == []
    assert fresh_lab.client.call(answer) == "be1"  # kube-proxy's rule serves it now


def test_starting_twice_never_duplicates_a_rule(fresh_lab: RunningLab) -> None:
    lab, proxy = fresh_lab.lab, fresh_lab.proxy
    assert proxy is not None
    once = nfqproxy_rules(lab.node_ns)
    os.kill(proxy.pid, signal.SIGKILL)
    proxy.wait(10)
    fresh_lab.start_proxy()
    assert nfqproxy_rules(lab.node_ns) == once
    assert Counter(http_split_in(fresh_lab, 9)).keys() <= {"be1", "be2", "be3"}


def http_split_in(running: RunningLab, count: int) -> Counter[str]:
    return running.client.call(http_split, WEB_VIP, HTTP_PORT, count)


def test_a_second_proxy_on_the_same_queue_fails_clearly_and_leaves_the_first_serving(
    fresh_lab: RunningLab,
) -> None:
    lab = fresh_lab.lab
    rules = nfqproxy_rules(lab.node_ns)
    second = subprocess.run(
        run_command(lab),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 1
    assert "cannot bind NFQUEUE 100" in second.stderr
    assert nfqproxy_rules(lab.node_ns) == rules
    assert set(http_split_in(fresh_lab, 6)) <= {"be1", "be2", "be3"}


BAD_SERVICES = {
    "invalid YAML": ("spec: [unclosed\n", "invalid YAML"),
    "a bad IP": (
        "clusterIP: 10.96.0.10",
        "clusterIP: 10.96.0.999",
        "spec.clusterIP: '10.96.0.999' is not a valid IP address",
    ),
    "port 70000": (
        "port: 80\n",
        "port: 70000\n",
        "spec.ports[0].port: 70000 is out of range 1-65535",
    ),
    "an unknown kind": ("kind: Service", "kind: Sevrice", "is not one of v1/Service"),
    "a VIP outside the service range": (
        "10.96.0.10",
        "192.168.7.10",
        "is outside the service range (10.96.0.0/12)",
    ),
    "shell metacharacters in a name": (
        "name: web",
        "name: web;rm -rf /",
        "metadata.name: 'web;rm -rf /' is not a valid name",
    ),
}


def _bad_variant(good: str, case: tuple[str, ...]) -> str:
    if len(case) == 2:
        return case[0]
    old, new, _ = case
    assert old in good, old
    return good.replace(old, new)


@pytest.mark.parametrize("case", sorted(BAD_SERVICES))
def test_a_bad_manifest_is_reported_by_file_object_and_field_and_the_last_good_state_keeps_serving(
    fresh_lab: RunningLab,
    case: str,
) -> None:
    lab = fresh_lab.lab
    services_file: Path = lab.manifests_dir / "services.yaml"
    good = services_file.read_text()
    expected = BAD_SERVICES[case][-1]
    services_file.write_text(_bad_variant(good, BAD_SERVICES[case]))
    deadline = time.monotonic() + 3
    errors: list[str] = []
    while time.monotonic() < deadline and not errors:
        errors = read_status(lab).get("manifest_errors", [])
        time.sleep(0.1)
    assert len(errors) == 1 and str(services_file) in errors[0] and expected in errors[0], errors
    if case != "invalid YAML":
        kind = "Sevrice" if case == "an unknown kind" else "Service"
        assert f"({kind} default/web" in errors[0], errors
    answers = http_split_in(fresh_lab, 9)
    assert sum(answers.values()) == 9 and set(answers) <= {"be1", "be2", "be3"}, answers
    assert fresh_lab.proxy is not None and fresh_lab.proxy.poll() is None
    services_file.write_text(good)
    deadline = time.monotonic() + 3
    while read_status(lab).get("manifest_errors") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_status(lab).get("manifest_errors") == []


def test_the_hook_rule_count_does_not_grow_with_services(fresh_lab: RunningLab) -> None:
    lab = fresh_lab.lab
    before = nfqproxy_rules(lab.node_ns)
    many = "".join(
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n"
        f"spec: {{clusterIP: 10.97.{i // 250}.{i % 250 + 1}, ports: [{{port: 80}}]}}\n"
        for i in range(500)
    )
    (lab.manifests_dir / "many.yaml").write_text(many)
    deadline = time.monotonic() + 5
    while read_status(lab).get("service_ports", 0) < 504 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_status(lab)["service_ports"] == 504
    assert nfqproxy_rules(lab.node_ns) == before


def test_an_object_defined_in_two_files_is_reported_and_the_first_copy_serves(
    fresh_lab: RunningLab,
) -> None:
    lab = fresh_lab.lab
    copy = (lab.manifests_dir / "services.yaml").read_text().replace("10.96.0.10", "10.96.0.11")
    (lab.manifests_dir / "z-copy.yaml").write_text(copy)
    deadline = time.monotonic() + 3
    errors: list[str] = []
    while time.monotonic() < deadline and not errors:
        errors = read_status(lab).get("object_errors", [])
        time.sleep(0.1)
    assert any("Service default/web is defined twice" in e for e in errors), errors
    assert sum(http_split_in(fresh_lab, 6).values()) == 6
