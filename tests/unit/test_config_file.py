"""`nfqproxy run` configured as kube-proxy is: a YAML config file whose keys are the flags,
flags winning over it, Go durations, refused negatives, help on every flag, --version,
and --log-level/--log-format after `run`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from nfqproxy import cli, config_file, flags


def parsed(
    tmp_path: Path, config: str, after: list[str], before: tuple[str, ...] = ()
) -> argparse.Namespace:
    """`nfqproxy [before] run --config FILE [after]`'s settings, FILE holding config."""
    path = tmp_path / "config.yaml"
    path.write_text(config)
    arguments = [*before, "run", "--config", str(path), *after]
    parser = cli.build_parser()
    return cli._with_config_file(parser, arguments, path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("1m", 60.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0),
     ("1.5s", 1.5), ("2", 2.0), ("0.5", 0.5), ("0s", 0.0), ("100us", 1e-4)],
)  # fmt: skip
def test_durations_are_read_as_kube_proxy_writes_them(text: str, seconds: float) -> None:
    assert flags.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-1s", "-2", "", "s", "1x", "1m-5s", "nan", "inf", "1 s"])
def test_bad_or_negative_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        flags.duration(text)


def test_the_file_sets_what_the_command_line_does_not_and_flags_win(tmp_path: Path) -> None:
    config = """
service-cidr: [10.96.0.0/12, "10.100.0.0/16,fd00:96::/108"]
min-sync-period: 500ms
sync-period: 1m
queue-num: 7
keep-hooks-on-exit: true
log-level: DEBUG
log-format: json
"""
    args = parsed(tmp_path, config, ["--sync-period", "45s", "--queue-num", "9"])
    assert args.min_sync_period == 0.5 and args.sync_period == 45.0 and args.queue_num == 9
    assert [str(n) for ranges in args.service_cidrs for n in ranges] == [
        "10.96.0.0/12",
        "10.100.0.0/16",
        "fd00:96::/108",
    ]
    assert args.keep_hooks_on_exit is True
    assert (args.log_level, args.log_format) == ("DEBUG", "json")
    # A repeatable flag on the command line replaces the file's list, not adds to it;
    # a flag before `run` wins too.
    given = parsed(
        tmp_path, config, ["--service-cidr", "10.0.0.0/16", "--no-keep-hooks-on-exit"],
        ("--log-level=ERROR",),
    )  # fmt: skip
    assert given.keep_hooks_on_exit is False  # a switch the file sets, turned off
    assert [str(n) for r in given.service_cidrs for n in r] == ["10.0.0.0/16"]
    assert given.log_level == "ERROR"


BAD_FILES = [
    ("queue-numm: 5", "unknown key 'queue-numm' (did you mean 'queue-num'?)"),
    ("queue-num: 70000", "queue-num: --queue-num must be 0-65535"),
    ("sync-period: -1s", "sync-period: expected a duration of 0 or more"),
    ("flow-capacity: 0", "flow-capacity: expected a positive whole number"),
    ("datapath: turbo", "datapath: 'turbo' is not one of"),
    ("fail-open: yes please", "fail-open: expected true or false"),
    ("no-fail-open: true", "unknown key 'no-fail-open'"),
    ("hostname-override: 0123", "hostname-override: expected a string (quote it)"),
    ("service-cidr: {a: 1}", "service-cidr: expected a string or a number"),
    ("cluster-cidr: [fd00::%eth0/64]", "cluster-cidr: 'fd00::%eth0/64': an IPv6 zone"),
    ("config: other.yaml", "unknown key 'config'"),
    ("- a list", "must be a mapping of flag names to values, got list"),
    ("a: [unclosed", "not YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_a_bad_file_is_an_error_that_names_the_key(
    tmp_path: Path, text: str, message: str, capsys: Any
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text + "\n")
    assert_exit(["run", "--config", str(path)], capsys, message)


def test_a_missing_file_is_named(tmp_path: Path, capsys: Any) -> None:
    missing = tmp_path / "nope.yaml"
    assert_exit(["run", "--config", str(missing)], capsys, f"config file {missing}: No such")


def assert_exit(argv: list[str], capsys: Any, message: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_every_flag_of_run_has_help_and_is_a_config_key() -> None:
    run = cli._subcommand(cli.build_parser(), "run")
    keys = config_file.flag_actions(run)
    for action in run._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
            assert any(o[2:] in keys for o in action.option_strings) or action.dest == "config"


def test_version_is_printed(capsys: Any) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("nfqproxy ")


def test_json_logs_are_one_object_a_line() -> None:
    handler = cli.log_handler("json")
    assert handler.formatter is not None
    record = logging.LogRecord("nfqproxy", logging.INFO, "x.py", 1, "queue %d", (100,), None)
    line = handler.formatter.format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "queue 100"
    assert parsed["level"] == "INFO" and parsed["logger"] == "nfqproxy" and parsed["time"]
