"""Fixtures for tests in real network namespaces, with real iptables and NFQUEUE.

Every lab gets a unique name and is torn down in a finally, even when the test fails:
its processes are stopped by pid and its namespaces deleted.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nfqproxy.datapath.fast.datapath import fast_path_available
from nfqproxy_lab.netns import NetnsThread
from nfqproxy_lab.proxy import start_proxy, wait_ready
from nfqproxy_lab.served_api import ServedApi
from nfqproxy_lab.topology import Lab, lab_endpoint_slices, lab_services

if os.geteuid() != 0:
    pytest.skip("kernel tests need root", allow_module_level=True)

_lab_numbers = itertools.count()


def new_lab(backends: int = 3) -> Lab:
    return Lab(f"t{os.getpid() % 10000}n{next(_lab_numbers)}", backends)


class RunningLab:
    """A lab with nfqproxy running in its node namespace, and threads in its namespaces."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.proxy: subprocess.Popen[bytes] | None = None
        self.client = NetnsThread(lab.client_ns)
        self.node = NetnsThread(lab.node_ns)

    def start_proxy(self, *extra: str) -> subprocess.Popen[bytes]:
        self.proxy = start_proxy(self.lab, *extra)
        wait_ready(self.lab, self.proxy)
        return self.proxy

    def close(self) -> None:
        # Lab first: with its namespaces gone, traffic a failed test left running errors out.
        self.lab.down()
        self.client.close(wait=False)
        self.node.close(wait=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab without a proxy."""
    lab = new_lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


# The scenario tests run against both data paths; a full install always builds the fast one.
DATAPATHS = ["reference", "fast"] if fast_path_available() else ["reference"]


@contextmanager
def lab_with_proxy(*proxy_args: str) -> Iterator[RunningLab]:
    running = RunningLab(new_lab())
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


@pytest.fixture(scope="module", params=DATAPATHS)
def running_lab(request: pytest.FixtureRequest) -> Iterator[RunningLab]:
    """One lab and proxy per data path, shared by a module's tests, which leave it as it was."""
    with lab_with_proxy("--datapath", request.param) as running:
        yield running


@pytest.fixture
def fresh_lab() -> Iterator[RunningLab]:
    """A lab and proxy of the test's own, for tests that change or stop them."""
    with lab_with_proxy() as running:
        yield running


ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(module: str, out: Path, *args: str, timeout: float = 600) -> Path:
    """Runs `python -m module --out out *args` from the repository; returns the one
    results folder it wrote. Fails with the benchmark's output if it fails."""
    run = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (results,) = out.iterdir()
    return results
