"""The inspection socket and its commands, against data paths programmed in the test:
`services` lists every port with its backends' shares, `flows` filters the table, and
`explain` names the backend the data path then picks, on every data path."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from nfqproxy import cli
from nfqproxy.control import client, views
from nfqproxy.control.server import ControlServer, RequestError, parse_endpoint
from nfqproxy.datapath.interface import Datapath
from nfqproxy.datapath.marks import SOURCE_NODE, SOURCE_OFF_CLUSTER, SOURCE_POD
from nfqproxy.datapath.offload.kernel import conntrack_fill
from nfqproxy.model import Backend
from nfqproxy_lab.packets import tcp_packet, udp_packet
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import DATAPATHS, datapath_params, new_datapath
from tests.helpers.snapshots import BACKENDS, snapshot

SEED = 0  # new_datapath's default (defaults.SEED) is checked below


@pytest.fixture(params=datapath_params(every_packet_only=True))
def programmed(request: pytest.FixtureRequest) -> tuple[Datapath, Any]:
    from nfqproxy import defaults

    assert defaults.SEED == SEED
    datapath = new_datapath(request.param, clock=FakeClock(1000.0))
    ports = snapshot(frozenset({0, 1, 2}), external=True).ports
    datapath.apply(snapshot(frozenset({0, 1, 2}), external=True))
    return datapath, ports


def test_explain_names_the_backend_the_data_path_then_picks(
    programmed: tuple[Datapath, Any],
) -> None:
    datapath, ports = programmed
    for sport in range(20000, 20200):
        for proto, port, target in (("TCP", 80, 8080), ("UDP", 53, 5353)):
            answer = views.explain(
                ports, datapath, SEED, ip_address("10.244.1.2"), sport,
                ip_address("10.96.0.10"), port, proto, SOURCE_POD,
            )  # fmt: skip
            build = tcp_packet if proto == "TCP" else udp_packet
            verdict = datapath.process(build("10.244.1.2", sport, "10.96.0.10", port), SOURCE_POD)
            assert verdict.payload is not None
            chosen = f"{ip_address(verdict.payload[16:20])}:{target}"
            assert answer["backend"] == chosen and answer["verdict"].endswith(chosen)


def test_explain_takes_the_local_table_for_an_outside_client_of_a_local_nodeport(
    programmed: tuple[Datapath, Any],
) -> None:
    datapath, ports = programmed
    assert views.source_bits(ip_address("198.51.100.2"), ()) == 0  # no cluster CIDR: nothing
    assert views.source_bits(ip_address("127.0.0.1"), ()) & SOURCE_NODE
    outside = views.explain(
        ports, datapath, SEED, ip_address("198.51.100.2"), 40000, ip_address("192.168.0.1"),
        30080, "TCP", SOURCE_OFF_CLUSTER,
    )  # fmt: skip
    pod = views.explain(
        ports, datapath, SEED, ip_address("10.244.1.2"), 40000, ip_address("192.168.0.1"),
        30080, "TCP", SOURCE_POD,
    )  # fmt: skip
    assert outside["candidates"] == ["10.244.11.2:8080"] and outside["masquerade"] is False
    assert len(pod["candidates"]) == 3 and "table" in pod


def test_explain_says_why_no_backend_is_picked(programmed: tuple[Datapath, Any]) -> None:
    datapath, ports = programmed
    cases = [
        ("10.96.0.20", 80, "TCP", "reject: no endpoints"),
        ("10.96.0.20", 53, "UDP", "drop: no local endpoints"),
        ("10.96.0.10", 443, "TCP", "reject: port not served"),
        ("10.96.9.9", 80, "TCP", "no service here"),
    ]
    for vip, port, proto, verdict in cases:
        answer = views.explain(
            ports, datapath, SEED, ip_address("10.244.1.2"), 1234, ip_address(vip), port,
            proto, SOURCE_POD,
        )  # fmt: skip
        assert answer["verdict"] == verdict, (vip, port)
    without_port = views.explain(
        ports, datapath, SEED, ip_address("10.244.1.2"), None, ip_address("10.96.0.10"), 80,
        "TCP", SOURCE_POD,
    )  # fmt: skip
    assert "SRC:PORT" in without_port["verdict"] and len(without_port["candidates"]) == 3


def test_services_lists_each_port_with_states_and_maglev_shares(
    programmed: tuple[Datapath, Any],
) -> None:
    datapath, ports = programmed
    web = ports[(ip_address("10.96.0.10"), "TCP", 80)]
    ports = dict(ports)
    ports[(ip_address("10.96.0.10"), "TCP", 80)] = replace(
        web,
        terminating=web.backends[:1],
        draining=(Backend(ip_address("10.244.14.2"), 8080),),
    )
    rows = {row["address"]: row for row in views.services_view(ports, datapath)}
    http = rows["10.96.0.10:80/TCP"]
    assert http["service"] == "d/web:http" and http["programmed"]
    states = [b["state"] for b in http["backends"]]
    assert states == ["serving-terminating", "ready", "ready", "draining"]
    assert sum(b["share"] for b in http["backends"]) == pytest.approx(1.0, abs=1e-3)
    assert all(0.3 < b["share"] < 0.37 for b in http["backends"][:3])
    assert "NodePort" in rows["192.168.0.1:30080/TCP"]["policies"]
    assert client.services_table(list(rows.values())).startswith("ADDRESS")


def test_flows_are_listed_and_filtered(programmed: tuple[Datapath, Any]) -> None:
    datapath, _ = programmed
    for sport in (30001, 30002, 30003):
        datapath.process(tcp_packet("10.244.1.2", sport, "10.96.0.10", 80), SOURCE_POD)
    datapath.process(udp_packet("10.244.1.3", 30004, "10.96.0.10", 53), SOURCE_POD)
    everything = views.flows_view(datapath)
    assert everything["total"] == 4 and len(everything["flows"]) == 4
    assert {f["service"] for f in everything["flows"]} == {"d/web:http", "d/web:dns"}
    assert len(views.flows_view(datapath, service="d/web:dns")["flows"]) == 1
    assert len(views.flows_view(datapath, service="d/web")["flows"]) == 4
    assert len(views.flows_view(datapath, client="10.244.1.2")["flows"]) == 3
    assert len(views.flows_view(datapath, client="10.244.1.2:30002")["flows"]) == 1
    backend = everything["flows"][0]["backend"]
    picked = views.flows_view(datapath, backend=backend)["flows"]
    assert picked and all(f["backend"] == backend for f in picked)
    assert views.flows_view(datapath, limit=2)["total"] == 4
    assert "4 shown of 4 tracked" in client.flows_table(everything)


@pytest.mark.parametrize("name", datapath_params(every_packet_only=True))
def test_flows_show_the_tables_fill_and_its_evictions(name: str) -> None:
    datapath = new_datapath(name, capacity=2, clock=FakeClock(1000.0))
    datapath.apply(snapshot(frozenset({0, 1})))
    for sport in (30001, 30002, 30003):
        datapath.process(tcp_packet("10.244.1.2", sport, "10.96.0.10", 80), SOURCE_POD)
    listed = views.flows_view(datapath)
    assert listed["table"] == {"capacity": 2, "evicted": 1, "expired": 0}
    assert [f["client_port"] for f in listed["flows"]] == [30002, 30003]
    assert client.flows_table(listed).endswith(
        "table: 2 of 2 (100.0%), 1 evicted when full, 0 expired"
    )


def test_conntracks_fill_is_read_from_its_proc_files(tmp_path: Path) -> None:
    stats, limit = tmp_path / "nf_conntrack", tmp_path / "nf_conntrack_max"
    columns = "entries  clashres found new invalid ignore delete chainlength insert " \
        "insert_failed drop early_drop icmp_error"  # fmt: skip
    rows = ["0000000a  0 0 0 0 0 0 0 0 0 00000002 00000010 0"] * 2
    stats.write_text("\n".join([columns, *rows]) + "\n")
    limit.write_text("262144\n")
    fill = conntrack_fill(stats, limit)
    assert fill == {"held_by": "kernel conntrack", "capacity": 262144, "evicted": 32,
                    "dropped_when_full": 4}  # fmt: skip
    assert client.table_fill(3, fill) == (
        "table (kernel conntrack): 3 of 262144 (0.0%), 32 evicted when full, 4 dropped when full"
    )
    assert conntrack_fill(tmp_path / "absent", limit) == {"held_by": "kernel conntrack",
                                                           "capacity": 262144}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.1:80", ("10.0.0.1", 80)), ("[fd00::1]:443", ("fd00::1", 443)),
     ("fd00::1", ("fd00::1", None)), ("10.0.0.1", ("10.0.0.1", None))],
)  # fmt: skip
def test_endpoints_are_read_in_either_family(text: str, expected: tuple[str, int]) -> None:
    address, port = parse_endpoint(text, "source", port_needed=False)
    assert (str(address), port) == expected


@pytest.mark.parametrize(
    "text", ["", "10.0.0.1:0", "10.0.0.1:99999", "host:80", "[fd00::1]:x", "fd00::1%eth0"]
)
def test_bad_endpoints_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(RequestError):
        parse_endpoint(text, "destination")


def test_the_socket_answers_the_commands_and_refuses_bad_requests(tmp_path: Path) -> None:
    datapath = new_datapath("reference", clock=FakeClock(1000.0))
    programmed = snapshot(frozenset({0, 1}))
    datapath.apply(programmed)
    path = tmp_path / "run" / "control.sock"
    server = ControlServer(path, lambda: programmed.ports, datapath, SEED, ())

    async def scenario() -> list[Any]:
        await server.start()
        try:
            assert path.stat().st_mode & 0o777 == 0o600

            async def ask(request: object) -> Any:
                reader, writer = await asyncio.open_unix_connection(str(path))
                writer.write(json.dumps(request).encode() + b"\n")
                answer = json.loads(await reader.readline())
                writer.close()
                return answer

            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"[" * 200_000 + b"\n")  # past the line limit: dropped, not a crash
            assert await reader.read() == b""
            writer.close()
            return [
                await ask({"command": "services"}),
                await ask({"command": "explain", "source": "10.244.1.2:1", "destination": "x"}),
                await ask({"command": "reboot"}),
                await ask(["not", "an", "object"]),
                await ask(
                    {
                        "command": "explain",
                        "source": "10.244.1.2:999",
                        "destination": "10.96.0.10:80",
                        "protocol": "tcp",
                    }
                ),
            ]
        finally:
            await server.stop()

    services, bad_address, unknown, not_object, explained = asyncio.run(scenario())
    assert len(services["ok"]) == 4
    assert "is not a valid IP address" in bad_address["error"]
    assert "unknown command 'reboot'" in unknown["error"]
    assert "JSON object" in not_object["error"]
    assert explained["ok"]["verdict"].startswith("accept: DNAT to 10.244.1")
    assert not path.exists()


def test_a_socket_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    datapath = new_datapath("reference", clock=FakeClock(1000.0))
    server = ControlServer(shared / "control.sock", dict, datapath, SEED, ())
    with pytest.raises(OSError, match="writable by others"):
        asyncio.run(server.start())


def test_a_command_without_a_proxy_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "none.sock"
    assert cli.main(["services", "--socket", str(missing)]) == 1
    assert f"no nfqproxy answers on {missing}" in caplog.text


@pytest.mark.parametrize("name", datapath_params())
def test_explain_follows_the_clients_session_affinity_entry(name: str) -> None:
    datapath = new_datapath(name, clock=FakeClock(1000.0))
    programmed = snapshot(frozenset({0, 1, 2}), affinity=60)
    datapath.apply(programmed)
    client_ip, vip = ip_address("10.244.1.2"), ip_address("10.96.0.10")

    def ask(sport: int) -> dict[str, Any]:
        return views.explain(programmed.ports, datapath, SEED, client_ip, sport, vip, 80,
                             "TCP", SOURCE_POD)  # fmt: skip

    def connect(sport: int) -> str:
        """The backend the data path gives a new flow from that port (from its trace)."""
        datapath.trace_start(8)
        datapath.process(tcp_packet(str(client_ip), sport, str(vip), 80), SOURCE_POD)
        (event,), _ = datapath.trace_take()
        datapath.trace_stop()
        assert event.backend is not None
        return f"{ip_address(event.backend)}:{event.backend_port}"

    fresh = ask(20000)
    assert "no entry for this client" in fresh["affinity"] and "maglev" in fresh
    sticky = connect(20000)
    assert sticky == fresh["backend"]
    # Another port of the same client: Maglev alone would pick elsewhere for some of
    # these, affinity keeps the first backend, and explain says so.
    for sport in range(20001, 20030):
        answer = ask(sport)
        assert answer["backend"] == sticky and answer["verdict"].endswith("(session affinity)")
        assert f"entry names {sticky} for 60s more" in answer["affinity"]
        assert connect(sport) == sticky
    other = ip_address("10.244.9.9")  # no entry: Maglev spreads its ports
    spread = {
        views.explain(programmed.ports, datapath, SEED, other, p, vip, 80, "TCP", SOURCE_POD)[
            "backend"
        ]
        for p in range(20001, 20030)
    }
    assert len(spread) > 1
    # Its backend leaves: the entry stays, but is not used.
    left = snapshot(frozenset({0, 1, 2}) - {BACKENDS.index(sticky.split(":")[0])}, affinity=60)
    datapath.apply(left)
    answer = views.explain(left.ports, datapath, SEED, client_ip, 20001, vip, 80, "TCP",
                           SOURCE_POD)  # fmt: skip
    assert "no longer a candidate" in answer["affinity"] and answer["backend"] != sticky
    assert connect(20001) == answer["backend"]


@pytest.mark.parametrize("start", [1000.0, 2.0**24 - 7])  # the second crosses the C wrap
@pytest.mark.parametrize("name", datapath_params(every_packet_only=True))
def test_flows_show_each_flows_age(name: str, start: float) -> None:
    clock = FakeClock(start)
    datapath = new_datapath(name, clock=clock)
    datapath.apply(snapshot(frozenset({0, 1})))
    for sport in (30001, 30002, 30003):
        datapath.process(tcp_packet("10.244.1.2", sport, "10.96.0.10", 80), SOURCE_POD)
        clock.advance(5)
    clock.advance(2)  # 17 s after the first
    datapath.process(tcp_packet("10.244.1.2", 30001, "10.96.0.10", 80), SOURCE_POD)  # no reset
    listed = views.flows_view(datapath)["flows"]
    assert [(f["client_port"], f["age"]) for f in listed] == [
        (30001, 17.0),
        (30002, 12.0),
        (30003, 7.0),
    ]
    assert "AGE" in client.flows_table(views.flows_view(datapath)).splitlines()[0]


@pytest.mark.skipif("fast" not in DATAPATHS, reason="the fast path is not built")
def test_a_flow_stamped_after_the_clock_was_read_is_not_194_days_old() -> None:
    """The queue worker reads its clock before the table lock, a listing reads its own
    before: a flow may be a second newer than the listing's now. Its age is 0, and the
    older flows' are not pushed by 2^24 s either."""
    clock = FakeClock(1000.0)
    datapath = new_datapath("fast", clock=clock)
    datapath.apply(snapshot(frozenset({0, 1})))
    datapath.process(tcp_packet("10.244.1.2", 30001, "10.96.0.10", 80), SOURCE_POD)
    clock.advance(10)
    datapath.process(tcp_packet("10.244.1.2", 30002, "10.96.0.10", 80), SOURCE_POD)
    clock.advance(-1)  # the listing's clock, read a second before the newest stamp
    ages = [f["age"] for f in views.flows_view(datapath)["flows"]]
    assert ages == [10.0, 0.0]
