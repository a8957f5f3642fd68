"""`nfqproxy services`, `flows`, `explain` and `trace` against a running proxy, on every
data path, asked from namespaces other than the proxy's: explain names the backend that a
connection from that client port then reaches, and trace shows it as it is decided."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from nfqproxy_lab import netns
from nfqproxy_lab.proxy import proxy_command, read_status
from nfqproxy_lab.topology import (
    CLIENT_IP,
    EMPTY_VIP,
    HTTP_PORT,
    HTTP_TARGET,
    WEB_VIP,
    Lab,
    backend_ip,
)
from tests.helpers.datapaths import datapath_params
from tests.helpers.labs import RunningLab, lab_with_proxy
from tests.helpers.labs import ask_proxy as ask

pytestmark = pytest.mark.kernel
PORTS = range(41001, 41013)


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
        assert listed["table"]["capacity"] > 0 and listed["table"]["evicted"] == 0
        for sport, backend in reached.items():
            assert seen.get(sport) == backend, (sport, listed)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Tracing:
    """`nfqproxy trace` running in a namespace, its lines read as they come by a thread (a
    select on a buffered pipe would miss lines already read into the buffer)."""

    def __init__(self, running: RunningLab, namespace: str, *args: str) -> None:
        command = [*proxy_command(), "trace", "--socket", str(running.lab.control_socket)]
        self.process = subprocess.Popen(
            netns.exec_command(namespace, [*command, *args]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As a shell starts a background command (CI's, for one): Ctrl-C must still
            # end the trace (a fresh clone's CI run caught this).
            preexec_fn=_ignore_sigint,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def next_line(self, timeout: float) -> str | None:
        """The command's next line, or None if none came within timeout."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop_with_ctrl_c(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        assert self.process.stderr is not None
        self.process.wait(10)
        return self.process.returncode, self.process.stderr.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def tracing(running: RunningLab, namespace: str, *args: str) -> Iterator[Tracing]:
    """`nfqproxy trace` in that namespace, killed at the end if the test did not stop it."""
    tracer = Tracing(running, namespace, *args)
    try:
        yield tracer
    finally:
        tracer.close()


def refused_connection() -> str:
    try:
        socket.create_connection((EMPTY_VIP, HTTP_PORT), 2.0).close()
    except ConnectionRefusedError:
        return "refused"
    return "connected"


def tracers_in_status(lab: Lab, count: int) -> bool:
    """Whether the proxy's status file comes to show that many tracers (within 10 s)."""
    deadline = time.monotonic() + 10.0
    while read_status(lab).get("tracers") != count and time.monotonic() < deadline:
        time.sleep(0.1)
    return read_status(lab).get("tracers") == count


@pytest.mark.parametrize("datapath", datapath_params())
def test_trace_shows_decisions_as_they_are_made_and_stops_on_ctrl_c(datapath: str) -> None:
    with lab_with_proxy("--datapath", datapath) as running:
        lab = running.lab
        with (
            tracing(running, lab.external_ns) as everything,
            tracing(running, lab.node_ns, "-o", "json", "--reason", "no_endpoints") as refusals,
        ):
            # The table's header comes once the proxy traces for it.
            header = everything.next_line(20.0)
            assert header is not None and header.split()[:2] == ["TIME", "VERDICT"], header
            # The JSON one prints nothing before its first decision: refuse connections
            # until it shows one (its start), then once more, to be shown for certain.
            for _ in range(40):
                assert running.client.call(refused_connection) == "refused"
                if refusals.next_line(0.5) is not None:
                    break
            else:
                pytest.fail("the filtered trace showed no refusal")
            assert running.client.call(refused_connection) == "refused"
            line = refusals.next_line(10.0)
            assert line is not None
            refused = json.loads(line)
            assert refused["action"] == "reject" and refused["reason"] == "no_endpoints"
            assert refused["destination"] == f"{EMPTY_VIP}:{HTTP_PORT}"
            assert refused["service"].endswith("/empty:http")

            name = running.client.call(get_from_port, WEB_VIP, HTTP_PORT, 41050)
            reached = f"{backend_ip(int(name.removeprefix('be')))}:{HTTP_TARGET}"
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                shown = everything.next_line(1.0) or ""
                if f"{CLIENT_IP}:41050" in shown:
                    break
            else:
                pytest.fail("the new flow was not traced")
            assert shown.split()[1:] == ["accept", "new_flow", "TCP", f"{CLIENT_IP}:41050",
                f"{WEB_VIP}:{HTTP_PORT}", shown.split()[6], reached]  # fmt: skip
            assert shown.split()[6].endswith("/web:http")

            assert tracers_in_status(lab, 2)  # the status file is written twice a second
            for process in (everything, refusals):
                code, err = process.stop_with_ctrl_c()
                assert code == 0 and "decisions traced" in err and "Traceback" not in err, err
        # The proxy noticed both leave: its data path records nothing again.
        assert tracers_in_status(lab, 0)
