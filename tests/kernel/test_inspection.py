"""`nfqproxy services`, `flows` and `explain` against a running proxy, on every data path,
asked from namespaces other than the proxy's: explain names the backend that a
connection from that client port then reaches."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

import pytest

from nfqproxy_lab import netns
from nfqproxy_lab.proxy import proxy_command
from nfqproxy_lab.topology import CLIENT_IP, HTTP_PORT, HTTP_TARGET, WEB_VIP, backend_ip
from tests.helpers.datapaths import datapath_params
from tests.helpers.labs import RunningLab, lab_with_proxy

pytestmark = pytest.mark.kernel
PORTS = range(41001, 41013)


def ask(running: RunningLab, namespace: str, *args: str) -> Any:
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


def get_from_port(host: str, port: int, source_port: int) -> str:
    """One HTTP request from a fixed client port; the answering backend's name."""
    with socket.create_connection((host, port), 5.0, source_address=(CLIENT_IP, source_port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.split(b"\r\n\r\n", 1)[1].decode().strip()


@pytest.mark.parametrize("datapath", datapath_params())
def test_explain_services_and_flows_agree_with_the_traffic(datapath: str) -> None:
    with lab_with_proxy("--datapath", datapath) as running:
        lab = running.lab
        reached = {}
        for sport in PORTS:
            explained = ask(
                running, lab.client_ns, "explain", f"{CLIENT_IP}:{sport}", f"{WEB_VIP}:{HTTP_PORT}"
            )
            name = running.client.call(get_from_port, WEB_VIP, HTTP_PORT, sport)
            reached[sport] = f"{backend_ip(int(name.removeprefix('be')))}:{HTTP_TARGET}"
            assert explained["backend"] == reached[sport], (sport, explained)
        assert len(set(reached.values())) > 1  # the ports spread: not one backend by luck

        services = ask(running, lab.external_ns, "services")
        web = next(s for s in services if s["address"] == f"{WEB_VIP}:{HTTP_PORT}/TCP")
        assert web["service"].endswith("/web:http") and web["programmed"]
        assert [b["state"] for b in web["backends"]] == ["ready"] * 3
        assert sum(b["share"] for b in web["backends"]) == pytest.approx(1.0, abs=1e-3)

        listed = ask(running, lab.node_ns, "flows", "--client", CLIENT_IP)
        seen = {f["client_port"]: f"{f['backend']}:{f['backend_port']}" for f in listed["flows"]}
        for sport, backend in reached.items():
            assert seen.get(sport) == backend, (sport, listed)
