"""The hook rule set: fixed, validated, and built without a shell."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from nfqproxy.hooks import JUMPS, OWNED_CHAINS, HookConfig, chain_rules


def test_the_rules_depend_only_on_the_ranges_and_queue_never_on_services() -> None:
    one = chain_rules(HookConfig((IPv4Network("10.96.0.0/12"),), 7))
    assert sum(map(len, one.values())) == 7 and len(JUMPS) == 11 and len(OWNED_CHAINS) == 6
    assert one[("raw", "NFQPROXY-SERVICES")][0][:2] == ["-d", "10.96.0.0/12"]
    assert one[("raw", "NFQPROXY-SERVICES")][0][-2:] == ["--queue-num", "7"]
    two = chain_rules(HookConfig((IPv4Network("10.96.0.0/16"), IPv4Network("10.100.0.0/16")), 7))
    assert len(two[("raw", "NFQPROXY-SERVICES")]) == 2


def test_every_jump_targets_an_owned_chain_in_its_own_table() -> None:
    assert {(table, chain) for table, _, chain in JUMPS} == set(OWNED_CHAINS)


@pytest.mark.parametrize(
    ("queue", "iptables", "message"),
    [
        (70000, "iptables", "out of range"),
        (-1, "iptables", "out of range"),
        (1, "sh -c reboot", "unsupported"),
    ],
)
def test_bad_hook_settings_are_refused(queue: int, iptables: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HookConfig((IPv4Network("10.96.0.0/12"),), queue, iptables)
