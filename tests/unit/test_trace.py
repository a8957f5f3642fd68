"""`nfqproxy trace` against a control socket in the test's event loop, on every data path:
the stream carries the decisions each tracer's filters pass, stops recording when the last
tracer leaves, ends when the proxy stops, and refuses bad requests with the reason."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nfqproxy.control import client, trace
from nfqproxy.control.server import ControlServer
from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.marks import SOURCE_POD
from nfqproxy_lab.packets import tcp_packet
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import datapath_params, new_datapath
from tests.helpers.snapshots import EMPTY_VIP, WEB_VIP, snapshot

CLIENT = "10.244.1.2"
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(params=datapath_params())
def datapath(request: pytest.FixtureRequest) -> Datapath:
    datapath = new_datapath(request.param, clock=FakeClock(1000.0))
    datapath.apply(snapshot(frozenset({0, 1, 2})))
    return datapath


def server_for(datapath: Datapath, tmp_path: Path) -> ControlServer:
    ports = snapshot(frozenset({0, 1, 2})).ports
    return ControlServer(tmp_path / "run" / "control.sock", lambda: ports, datapath, 0, ())


async def open_trace(server: ControlServer, **request: Any) -> tuple[Stream, Any]:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(json.dumps({"command": "trace", **request}).encode() + b"\n")
    return (reader, writer), json.loads(await reader.readline())


async def lines(reader: asyncio.StreamReader, count: int) -> list[dict[str, Any]]:
    return [json.loads(await asyncio.wait_for(reader.readline(), 5.0)) for _ in range(count)]


async def nobody_traces(server: ControlServer) -> bool:
    for _ in range(500):  # the server sees each client's end of the socket close
        if not server.tracing.tracers:
            return True
        await asyncio.sleep(0.01)
    return False


def test_each_tracer_gets_what_its_filters_pass_and_tracing_stops_with_the_last(
    datapath: Datapath, tmp_path: Path
) -> None:
    server = server_for(datapath, tmp_path)

    async def scenario() -> None:
        await server.start()
        try:
            (everything, a), ok = await open_trace(server)
            (refusals, b), _ = await open_trace(server, reasons=["no_endpoints", "no_service"])
            (web, c), _ = await open_trace(server, service="d/web")
            assert ok == {"ok": "tracing"} and len(server.tracing.tracers) == 3
            datapath.process(tcp_packet(CLIENT, 40000, WEB_VIP, 80), SOURCE_POD)
            datapath.process(tcp_packet(CLIENT, 40001, EMPTY_VIP, 80), SOURCE_POD)
            datapath.process(tcp_packet(CLIENT, 40002, "10.96.0.99", 80), SOURCE_POD)
            all_three = [line["event"] for line in await lines(everything, 3)]
            assert [e["reason"] for e in all_three] == ["new_flow", "no_endpoints", "no_service"]
            new_flow = all_three[0]
            assert new_flow["action"] == "accept" and new_flow["protocol"] == "TCP"
            assert new_flow["client"] == f"{CLIENT}:40000"
            assert new_flow["destination"] == f"{WEB_VIP}:80"
            assert new_flow["service"] == "d/web:http"
            assert new_flow["backend"].startswith("10.244.1") and new_flow["backend"].endswith(
                ":8080"
            )
            assert all_three[2]["service"] is None and all_three[2]["backend"] is None
            assert [line["event"] for line in await lines(refusals, 2)] == all_three[1:]
            assert [line["event"] for line in await lines(web, 1)] == all_three[:1]
            for writer in (a, b, c):
                writer.close()
            assert await nobody_traces(server)
            # Off: the data path records nothing more.
            datapath.process(tcp_packet(CLIENT, 40003, EMPTY_VIP, 80), SOURCE_POD)
            assert datapath.trace_take() == ([], 0)
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_bad_trace_requests_are_refused_with_the_reason(tmp_path: Path) -> None:
    server = server_for(new_datapath("reference", clock=FakeClock(1000.0)), tmp_path)

    async def scenario() -> list[Any]:
        await server.start()
        try:
            answers = [
                (await open_trace(server, reasons=["tired"]))[1],
                (await open_trace(server, reasons="no_endpoints"))[1],
                (await open_trace(server, service=7))[1],
            ]
            streams = [await open_trace(server) for _ in range(trace.MAX_TRACERS)]
            answers.append((await open_trace(server))[1])
            for (_, writer), _ in streams:
                writer.close()
            assert await nobody_traces(server)
            return answers
        finally:
            await server.stop()

    unknown, not_list, not_text, too_many = asyncio.run(scenario())
    assert "unknown reason 'tired'" in unknown["error"] and "no_endpoints" in unknown["error"]
    assert "reasons must be a list" in not_list["error"]
    assert "service must be a string" in not_text["error"]
    assert f"{trace.MAX_TRACERS} clients trace already" in too_many["error"]
    with pytest.raises(trace.TraceRefused, match="stopping"):  # stopped: no new tracer
        server.tracing.subscribe(trace.TraceFilter())


def test_a_slow_tracer_is_told_what_it_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "BACKLOG", 2)
    datapath = new_datapath("reference", clock=FakeClock(1000.0))
    datapath.apply(snapshot(frozenset({0})))
    server = server_for(datapath, tmp_path)

    async def scenario() -> list[dict[str, Any]]:
        await server.start()
        try:
            (reader, writer), _ = await open_trace(server)
            for sport in range(40000, 40005):
                datapath.process(tcp_packet(CLIENT, sport, EMPTY_VIP, 80), SOURCE_POD)
            server.tracing.flush()  # all five at once, before the stream writes any
            received = await lines(reader, 3)
            writer.close()
            return received
        finally:
            await server.stop()

    first, second, lost = asyncio.run(scenario())
    assert [first["event"]["client"], second["event"]["client"]] == [
        f"{CLIENT}:40000",
        f"{CLIENT}:40001",
    ]
    assert lost == {"lost": 3}


def test_the_command_prints_decisions_until_the_proxy_stops(
    datapath: Datapath, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = server_for(datapath, tmp_path)

    async def scenario() -> int:
        await server.start()
        request: dict[str, Any] = {"command": "trace", "service": None, "reasons": []}
        command = asyncio.create_task(
            asyncio.to_thread(client.follow_trace, server.path, request, False)
        )
        try:
            while not server.tracing.tracers:
                await asyncio.sleep(0.01)
            datapath.process(tcp_packet(CLIENT, 40001, EMPTY_VIP, 80), SOURCE_POD)
            server.tracing.flush()
            while any(t.pending for t in server.tracing.tracers):  # written to the socket
                await asyncio.sleep(0.01)
        finally:
            await server.stop()
        return await asyncio.wait_for(command, 10.0)

    assert asyncio.run(scenario()) == 1
    out, err = capsys.readouterr()
    header, line = out.splitlines()
    assert header.split() == ["TIME", "VERDICT", "PROTO", "CLIENT", "DESTINATION", "SERVICE",
                              "BACKEND"]  # fmt: skip
    assert line.split()[1:] == ["reject", "no_endpoints", "TCP", f"{CLIENT}:40001",
                                f"{EMPTY_VIP}:80", "d/empty:http", "-"]  # fmt: skip
    assert "the proxy ended the trace after 1 decisions" in err
