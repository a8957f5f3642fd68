"""The factory turns a name into a data path and its binding, and the command line finds
the lab's commands through an entry point, so that the proxy never imports the lab."""

from __future__ import annotations

import dataclasses
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from nfqproxy import cli, defaults
from nfqproxy.datapath import factory
from nfqproxy.datapath.verdicts import Action, Verdict

SETTINGS = factory.DatapathSettings(defaults.SERVICE_CIDRS, flow_capacity=16)


def test_an_unknown_data_path_is_refused_with_the_names_there_are() -> None:
    with pytest.raises(
        ValueError, match="unknown data path 'ebpf'; choose one of fast, offload, reference"
    ):
        factory.build("ebpf", SETTINGS, 100)


def test_fail_open_is_refused_by_a_data_path_that_cannot_do_it() -> None:
    settings = factory.DatapathSettings(defaults.SERVICE_CIDRS, fail_open=True)
    with pytest.raises(
        ValueError, match="not supported by the reference data path; it is by: fast, offload"
    ):
        factory.build("reference", settings, 100)


def test_every_available_data_path_builds_unbound(datapath_name: str) -> None:
    datapath, binding = factory.build(datapath_name, SETTINGS, 100)
    assert datapath.status()["service_ports"] == 0
    assert datapath.process(b"") == Verdict(Action.DROP, "truncated_ip_header")
    binding.close()  # built, not bound: there is no queue to give back


def test_the_lab_commands_come_from_the_entry_point() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["lab", "up", "--backends", "2"]).lab_command == "up"
    assert parser.parse_args(["demo"]).command == "demo"


def entry(value: str) -> EntryPoint:
    return EntryPoint(name="test", value=value, group=cli.COMMAND_PLUGINS)


def test_a_plugin_left_out_of_the_build_leaves_the_proxy_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def only_missing(**_: Any) -> list[EntryPoint]:
        return [entry("nfqproxy_absent_package.cli")]

    monkeypatch.setattr(cli, "entry_points", only_missing)
    assert cli.command_plugins() == []
    args = cli.build_parser().parse_args(["cleanup"])
    assert args.command == "cleanup"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo"])


def test_a_plugin_that_fails_to_import_for_another_reason_is_not_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(**_: Any) -> list[EntryPoint]:
        # The plugin's own package exists, the module it names does not: a bug, not a build
        # without the plugin.
        return [entry("nfqproxy_lab.no_such_module")]

    monkeypatch.setattr(cli, "entry_points", broken)
    with pytest.raises(ModuleNotFoundError):
        cli.command_plugins()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["10.96.0.1/12"], "has host bits set"),
        (["fd00::%eth0/108"], "zone"),
        (["fd00::/108,nonsense"], "'nonsense'"),
        (["::ffff:10.96.0.0/108"], "IPv4-mapped range"),
        (["::/64"], "IPv4-mapped range"),  # holds it
    ],
)
def test_bad_service_ranges_are_refused_with_the_reason(
    given: list[str], message: str, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    argv = ["run", "--datapath", "reference", "--manifests", "/nonexistent"]
    for value in given:
        argv += ["--service-cidr", value]
    with pytest.raises(SystemExit):
        if cli.main(argv) == 2:
            raise SystemExit(2)
    assert message in caplog.text + capsys.readouterr().err


def test_an_ipv6_range_is_refused_by_a_data_path_without_ipv6(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every data path serves IPv6 now: one made without it stands for a future one.
    without = dataclasses.replace(factory.DATAPATHS["reference"], families=frozenset({4}))
    monkeypatch.setitem(factory.DATAPATHS, "reference", without)
    argv = ["run", "--datapath", "reference", "--manifests", "/x", "--service-cidr"]
    assert cli.main([*argv, "10.96.0.0/12,fd00::/108"]) == 2
    assert "the reference data path does not serve IPv6 yet" in caplog.text
    serving = factory.serving_family(6)
    assert serving and "reference" not in serving
    assert f"needs --datapath {' or '.join(serving)}" in caplog.text
