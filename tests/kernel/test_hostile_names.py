"""No string from a Kubernetes object reaches a shell or an iptables argument.

The proxy runs under strace, which records the argv of every program it executes. Its
manifests carry hostile strings (shell substitutions, iptables options, newlines, quotes)
in every string field an object has: names refused by validation, and fields the model
ignores on a service that is otherwise valid and must be served. Each hostile string
holds the marker MARK, and no execve, no rule and no file it names may show it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nfqproxy.files import atomic_write
from nfqproxy_lab import netns
from nfqproxy_lab.proxy import read_status, start_proxy, wait_ready
from nfqproxy_lab.topology import HTTP_PORT, HTTP_TARGET, WEB_VIP, backend_ip
from nfqproxy_lab.traffic import http_split
from tests.helpers.labs import RunningLab, new_lab

pytestmark = pytest.mark.kernel
MARK = "pwnd"
CANARY = Path(f"/tmp/nfqproxy-{MARK}-{os.getpid()}")
HOSTILE = [
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    f"x; touch {CANARY} #",
    f"-j ACCEPT --comment {MARK}",
    f"a\n-A INPUT -j DROP {MARK}",
    f"'\"{MARK}\\",
    f"{MARK}\x00nul",
]
QUIET_VIP = "10.96.0.40"  # a valid service whose ignored fields are all hostile


def hostile(index: int) -> str:
    return HOSTILE[index % len(HOSTILE)]


def refused_objects() -> list[dict[str, Any]]:
    """Objects whose validated fields are hostile: each must be refused by name."""
    objects: list[dict[str, Any]] = []
    for i, value in enumerate(HOSTILE):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": value, "namespace": "default"},
                "spec": {"clusterIP": f"10.96.1.{i + 1}", "ports": [{"port": 80}]},
            }
        )
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"bad-port-name-{i}", "namespace": value},
                "spec": {"clusterIP": value, "ports": [{"name": value, "port": 80}]},
            }
        )
        objects.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"bad-address-{i}",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "quiet"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [f"{backend_ip(1)}{value}"]}],
                "ports": [{"name": value, "port": HTTP_TARGET, "protocol": value}],
            }
        )
        objects.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"bad-node-{i}",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "quiet"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [backend_ip(1)], "nodeName": value}],
            }
        )
    return objects


def quiet_service() -> list[dict[str, Any]]:
    """A valid service and slice, with hostile strings in every field the model ignores."""
    annotations = {f"example.com/{MARK}-{i}": value for i, value in enumerate(HOSTILE)}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "quiet",
            "namespace": "default",
            "annotations": annotations,
            "labels": {"app": "quiet", "example.com/note": hostile(0)},
            "uid": hostile(1),
        },
        "spec": {
            "clusterIP": QUIET_VIP,
            "ports": [
                {
                    "name": "http",
                    "port": HTTP_PORT,
                    "targetPort": hostile(2),
                    "appProtocol": hostile(3),
                }
            ],
            "selector": {"app": hostile(4)},
            "loadBalancerSourceRanges": [hostile(5)],
            "externalName": hostile(6),
        },
        "status": {"loadBalancer": {"ingress": [{"hostname": hostile(0)}]}},
    }
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "quiet-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "quiet"},
            "annotations": annotations,
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [backend_ip(i)],
                "conditions": {"ready": True},
                "hostname": hostile(i),
                "hints": {"forZones": [{"name": hostile(i + 1)}]},
                "zone": hostile(i + 2),
                "targetRef": {"kind": "Pod", "namespace": hostile(i + 3), "name": hostile(i + 4)},
            }
            for i in (1, 2, 3)
        ],
        "ports": [
            {"name": "http", "port": HTTP_TARGET, "protocol": "TCP", "appProtocol": hostile(5)}
        ],
    }
    return [service, endpoint_slice]


def traced_argvs(trace: Path) -> list[str]:
    """The execve lines strace wrote: program, argv (strings escaped as C literals)."""
    return [line for line in trace.read_text(errors="replace").splitlines() if "execve(" in line]


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stop_traced_proxy(tracer_pid: int, signal_number: int = signal.SIGTERM) -> None:
    """Signals the proxy strace started (by pid), so that strace ends with it; signalling
    strace itself would leave the proxy running, detached."""
    for pid in children(tracer_pid):
        os.kill(pid, signal_number)


def test_hostile_strings_in_objects_reach_no_command_no_rule_and_no_shell() -> None:
    running = RunningLab(new_lab())
    trace = running.lab.dir / "execve.trace"  # goes with the lab, whatever happens
    tracer = None
    try:
        running.lab.up()
        # A file is refused whole, so each refused object gets a file of its own.
        for number, obj in enumerate(refused_objects()):
            atomic_write(running.lab.manifests_dir / f"hostile-{number}.yaml", yaml.safe_dump(obj))
        atomic_write(running.lab.manifests_dir / "quiet.yaml", yaml.safe_dump_all(quiet_service()))
        strace = ["strace", "-f", "--seccomp-bpf", "-e", "trace=execve", "-s", "65536"]
        strace += ["-o", str(trace), "--"]
        # A short sync period, so that the hook watchdog runs iptables-save under the trace.
        tracer = start_proxy(running.lab, "--sync-period", "1", wrapper=strace)
        wait_ready(running.lab, tracer)
        # The valid services are served, the quiet one despite its hostile fields.
        web = running.client.call(http_split, WEB_VIP, HTTP_PORT, 15)
        assert sum(web.values()) == 15, web
        quiet = running.client.call(http_split, QUIET_VIP, HTTP_PORT, 15)
        assert sum(quiet.values()) == 15 and set(quiet) <= {"be1", "be2", "be3"}, quiet
        errors = read_status(running.lab)["manifest_errors"]
        assert len(errors) == len(refused_objects()), errors
        assert all("hostile-" in e and "\n" not in e for e in errors), errors
        rules = netns.run(netns.exec_command(running.lab.node_ns, ["iptables-save"]))
        assert "NFQPROXY-SERVICES" in rules and MARK not in rules
        time.sleep(1.0)  # a watchdog round
        stop_traced_proxy(tracer.pid)
        assert tracer.wait(15) == 0
        log = (running.lab.dir / "proxy.log").read_text(errors="replace")
        argvs = traced_argvs(trace)
    finally:
        if tracer is not None and tracer.poll() is None:
            stop_traced_proxy(tracer.pid)
            try:
                tracer.wait(10)
            except subprocess.TimeoutExpired:
                stop_traced_proxy(tracer.pid, signal.SIGKILL)
                tracer.wait(5)
        running.close()
    programs = [re.search(r'execve\("([^"]*)"', line) for line in argvs]
    names = {Path(m.group(1)).name for m in programs if m}
    # Installing, watching and removing the hooks ran iptables (the back end --iptables
    # auto found in the lab's fresh namespace: nft); the trace caught it.
    assert {"iptables-nft-restore", "iptables-nft", "iptables-nft-save"} <= names, names
    assert not [line for line in argvs if MARK in line], "a hostile string reached a command"
    assert not names & {"sh", "bash", "dash"}, "a shell was run"
    assert not CANARY.exists()
    # The refused objects are logged, escaped: no line of the log starts with a forged rule.
    assert log.count("is not a valid") >= len(HOSTILE)
    assert not [line for line in log.splitlines() if line.startswith("-A INPUT")]
