"""Labs in network namespaces, with nfqproxy running in their node namespace.

Every lab gets a unique name and is torn down in a finally, even when the test fails:
its processes are stopped by pid and its namespaces deleted.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from nfqproxy.datapath import factory
from nfqproxy_lab import netns
from nfqproxy_lab.netns import NetnsThread
from nfqproxy_lab.proxy import proxy_command, read_status, start_proxy, wait_ready
from nfqproxy_lab.served_api import ServedApi
from nfqproxy_lab.topology import Lab, lab_endpoint_slices, lab_services

_lab_numbers = itertools.count()


def new_lab(backends: int = 3, dual_stack: bool = False) -> Lab:
    return Lab(f"t{os.getpid() % 10000}n{next(_lab_numbers)}", backends, dual_stack)


class RunningLab:
    """A lab with nfqproxy running in its node namespace, and threads in its namespaces."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.proxy: subprocess.Popen[bytes] | None = None
        self.client = NetnsThread(lab.client_ns)
        self.node = NetnsThread(lab.node_ns)
        self.external = NetnsThread(lab.external_ns)  # a client outside the cluster

    def start_proxy(self, *extra: str) -> subprocess.Popen[bytes]:
        self.proxy = start_proxy(self.lab, *extra)
        wait_ready(self.lab, self.proxy)
        return self.proxy

    @property
    def sees_every_packet(self) -> bool:
        """Whether the running proxy's data path sees every packet of a flow (fast,
        reference) or only the first (offload: conntrack carries the rest)."""
        name = read_status(self.lab)["datapath"]
        return factory.DATAPATHS[name].every_packet

    def close(self) -> None:
        # Lab first: with its namespaces gone, traffic a failed test left running errors out.
        self.lab.down()
        self.client.close(wait=False)
        self.node.close(wait=False)
        self.external.close(wait=False)


@contextmanager
def lab_with_proxy(*proxy_args: str, dual_stack: bool = False) -> Iterator[RunningLab]:
    running = RunningLab(new_lab(dual_stack=dual_stack))
    try:
        running.lab.up()
        running.start_proxy(*proxy_args)
        yield running
    finally:
        running.close()


@contextmanager
def lab_with_api_proxy(*proxy_args: str) -> Iterator[tuple[RunningLab, ServedApi]]:
    """A lab whose proxy follows the in-process API server, which holds the lab's objects."""
    running = RunningLab(new_lab())
    api: ServedApi | None = None
    try:
        running.lab.up()
        api = ServedApi(running.lab.node_ns)
        for item in lab_services()["items"]:
            api.call(api.server.create("services", item))
        for item in lab_endpoint_slices([1, 2, 3])["items"]:
            api.call(api.server.create("endpointslices", item))
        running.proxy = start_proxy(running.lab, *proxy_args, api_server=api.url)
        wait_ready(running.lab, running.proxy)
        yield running, api
    finally:
        running.close()
        if api is not None:
            api.close()


def ask_proxy(running: RunningLab, namespace: str, *args: str) -> Any:
    """A command's JSON answer, run in that namespace against the lab proxy's socket."""
    command = [*proxy_command(), *args, "--socket", str(running.lab.control_socket)]
    done = subprocess.run(
        netns.exec_command(namespace, [*command, "-o", "json"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def nfqproxy_rules(namespace: str) -> list[str]:
    """nfqproxy's iptables rules and chains in the namespace, as iptables-save lists them."""
    dump = netns.run(netns.exec_command(namespace, ["iptables-save"]))
    return [line for line in dump.splitlines() if "NFQPROXY" in line or "nfqproxy" in line]


STICKY_VIP = "10.96.0.30"


def sticky_manifest() -> str:
    """The lab's web service and slice, renamed 'sticky', with sessionAffinity ClientIP."""
    service = copy.deepcopy(lab_services()["items"][0])
    service["metadata"]["name"] = "sticky"
    service["spec"].update(
        clusterIP=STICKY_VIP,
        clusterIPs=[STICKY_VIP],
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}},
    )
    endpoint_slice = lab_endpoint_slices([1, 2, 3])["items"][0]
    endpoint_slice["metadata"]["name"] = "sticky-lab"
    endpoint_slice["metadata"]["labels"]["kubernetes.io/service-name"] = "sticky"
    return yaml.safe_dump_all([service, endpoint_slice])


def wait_for_sync_after(lab: Lab, syncs: int, timeout: float = 3.0) -> None:
    """Waits for a sync after the first `syncs`, and, on the offload path, for the
    connections of removed backends to be deleted (in the background, after the sync)."""
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(lab)
        table = status.get("connection_table", {})
        if status.get("syncs", 0) > syncs and not table.get("removals_pending", 0):
            return
        assert time.monotonic() < deadline, "the removal was not synced"
        time.sleep(0.02)
