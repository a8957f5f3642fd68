"""The hook rule set: fixed, validated, and built without a shell."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from nfqproxy.hooks import JUMPS, OWNED_CHAINS, HookConfig, chain_rules, jumps


def test_the_rules_depend_only_on_the_ranges_and_queue_never_on_services() -> None:
    one = chain_rules(HookConfig((IPv4Network("10.96.0.0/12"),), 7))
    assert sum(map(len, one.values())) == 7 and len(jumps(HookConfig((), 7))) == 11
    assert len(JUMPS) == 15 and len(OWNED_CHAINS) == 8
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


def test_first_packets_only_queues_new_undecided_connections_over_every_queue() -> None:
    from nfqproxy.datapath.marks import MarkLayout

    config = HookConfig(
        (IPv4Network("10.96.0.0/12"),),
        100,
        marks=MarkLayout(0xFF00),
        queues=4,
        first_packets_only=True,
    )
    rules = chain_rules(config)
    assert set(rules) == {
        ("mangle", "NFQPROXY-FIRST"),
        ("nat", "NFQPROXY-DECIDED"),
        ("nat", "NFQPROXY-HAIRPIN"),
        ("filter", "NFQPROXY-FORWARD"),
        ("filter", "NFQPROXY-REJECT"),
    }
    first = " ".join(rules[("mangle", "NFQPROXY-FIRST")][0])
    assert "--ctstate NEW -m connmark ! --mark 0x100/0x100" in first
    assert first.endswith("--queue-balance 100:103 --queue-cpu-fanout")
    decided = " ".join(rules[("nat", "NFQPROXY-DECIDED")][0])
    assert decided.endswith("--save-mark --nfmask 0xff00 --ctmask 0xff00")
    assert len(jumps(config)) == 9
