"""Starting and watching an nfqproxy process inside a lab's node namespace."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nfqproxy.datapath import factory
from nfqproxy_lab import netns
from nfqproxy_lab.dualstack import CLUSTER_CIDR6, SERVICE_CIDR6
from nfqproxy_lab.topology import CLUSTER_CIDR, NODE_NAME, SERVICE_CIDR, Lab


def proxy_command() -> list[str]:
    installed = Path(sys.executable).with_name("nfqproxy")
    return [str(installed)] if installed.exists() else [shutil.which("nfqproxy") or "nfqproxy"]


def _serves_ipv6(lab: Lab, args: Sequence[str]) -> bool:
    """Whether the proxy gets the lab's IPv6 ranges: in a dual-stack lab, when its data path
    (--datapath, else the default) parses IPv6. An IPv4-only one serves the IPv4 half."""
    if not lab.dual_stack:
        return False
    chosen = list(args)
    name = chosen[chosen.index("--datapath") + 1] if "--datapath" in chosen[:-1] else None
    implementation = factory.DATAPATHS.get(name or factory.default_datapath())
    return implementation is not None and 6 in implementation.families


def run_command(
    lab: Lab, *extra: str, api_server: str | None = None, wrapper: Sequence[str] = ()
) -> list[str]:
    """`nfqproxy run` in the lab's node namespace, on its manifests or on an API server;
    wrapper runs it (setpriv with fewer capabilities, say)."""
    source = ["--api-server", api_server] if api_server else ["--manifests", str(lab.manifests_dir)]
    command = [
        *wrapper,
        *proxy_command(),
        "run",
        *source,
        "--service-cidr",
        f"{SERVICE_CIDR},{SERVICE_CIDR6}" if _serves_ipv6(lab, extra) else SERVICE_CIDR,
        "--hostname-override",
        NODE_NAME,
        "--cluster-cidr",
        CLUSTER_CIDR,
        *(["--cluster-cidr", CLUSTER_CIDR6] if _serves_ipv6(lab, extra) else []),
        *([] if "--socket" in extra else ["--socket", str(lab.control_socket)]),
        *extra,
    ]
    return netns.exec_command(lab.node_ns, command)


def start_proxy(
    lab: Lab,
    *extra: str,
    key: str = "proxy",
    api_server: str | None = None,
    wrapper: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Starts nfqproxy in the lab, writing its status file to lab.status_file."""
    if lab.status_file.exists():
        lab.status_file.unlink()
    status = ["--status-file", str(lab.status_file)]
    command = run_command(lab, *status, *extra, api_server=api_server, wrapper=wrapper)
    return lab.start_process(key, command)


def read_status(lab: Lab) -> dict[str, Any]:
    try:
        status: dict[str, Any] = json.loads(lab.status_file.read_text())
        return status
    except (OSError, ValueError):
        return {}


def wait_ready(lab: Lab, process: subprocess.Popen[bytes], timeout: float = 20.0) -> dict[str, Any]:
    """Waits until the proxy has programmed its tables and installed its hooks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (lab.dir / "proxy.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"nfqproxy exited with {process.returncode}:\n{log}")
        status = read_status(lab)
        if status.get("ready"):
            return status
        time.sleep(0.05)
    raise TimeoutError(f"nfqproxy not ready after {timeout} s")
