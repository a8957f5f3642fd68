"""The lab of one N (backends serving, the cluster in the API server), one run at a time,
and what a killed run left behind."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from bench.scale.cluster import Cluster
from bench.scale.settings import IPERF_PORT, LAB_PREFIX, SERVE_PORT
from bench.traffic import build_nfq_ceiling, build_tcpbench, widen_client_ports
from nfqproxy_lab import netns
from nfqproxy_lab.served_api import ServedApi
from nfqproxy_lab.topology import Lab, all_labs

LOCK_FILE = Path("/run/nfqproxy/scale-bench.lock")


def take_lock() -> TextIO:
    """One run at a time: a second would take the first's labs for leftovers. The lock
    goes with the process, however it ends."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    handle = LOCK_FILE.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another scale benchmark is running (it holds {LOCK_FILE})") from None
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def clean_leftovers() -> list[str]:
    """Labs and namespaces a killed run of this benchmark left behind, removed. Only
    called with the lock held, so no live run owns them."""
    found = []
    for name in all_labs():
        if name.startswith(LAB_PREFIX):
            Lab.load(name).down()
            found.append(f"lab {name}")
    for name in netns.names():
        if name.startswith(LAB_PREFIX):
            netns.delete(name)
            found.append(f"namespace {name}")
    return found


@contextmanager
def scale_lab(size: int, name: str) -> Iterator[tuple[Lab, ServedApi, Cluster]]:
    lab = Lab(name, 3)
    api: ServedApi | None = None
    try:
        lab.up()
        widen_client_ports(lab)
        # The client and server of every measure, compiled into each lab.
        build_tcpbench(lab.dir / "tcpbench")
        build_nfq_ceiling(lab.dir / "nfq_ceiling")
        for i in (1, 2, 3):
            serve = [str(lab.dir / "tcpbench"), "serve", str(SERVE_PORT)]
            lab.start_process(f"tcpbench{i}", netns.exec_command(lab.backend_ns(i), serve))
        lab.start_process(
            "iperf3", netns.exec_command(lab.backend_ns(1), ["iperf3", "-s", "-p", str(IPERF_PORT)])
        )
        cluster = Cluster(size)
        api = ServedApi(lab.node_ns, bookmark_interval=30)
        for obj in cluster.service_objects():
            api.call(api.server.create("services", obj))
        for obj in cluster.slice_objects():
            api.call(api.server.create("endpointslices", obj))
        time.sleep(0.3)  # the servers bind
        yield lab, api, cluster
    finally:
        lab.down()
        if api is not None:
            api.close()
