"""The hook rule set: fixed, validated, and built without a shell."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address

import pytest

from nfqproxy import ipsets
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.hooks import (
    INNER_CHAINS,
    JUMPS,
    OWNED_CHAINS,
    HookConfig,
    chain_rules,
    command,
    families,
    jumps,
)
from nfqproxy.model import ServicePort


def test_the_rules_depend_only_on_the_ranges_and_queue_never_on_services() -> None:
    one = chain_rules(HookConfig((IPv4Network("10.96.0.0/12"),), 7))
    assert sum(map(len, one.values())) == 11 and len(jumps(HookConfig((), 7))) == 11
    assert len(JUMPS) == 15 and len(OWNED_CHAINS) == 10
    services = [" ".join(rule) for rule in one[("raw", "NFQPROXY-SERVICES")]]
    # The firewall first, then the service range and the external frontends' set.
    assert "--match-set nfqproxy-fw dst,dst" in services[0] and services[0].endswith("DROP")
    assert services[1].startswith("-d 10.96.0.0/12") and services[1].endswith("-j NFQPROXY-QUEUE")
    assert "--match-set nfqproxy-frontends dst,dst" in services[2]
    assert one[("raw", "NFQPROXY-QUEUE")][-1][-2:] == ["--queue-num", "7"]
    two = chain_rules(HookConfig((IPv4Network("10.96.0.0/16"), IPv4Network("10.100.0.0/16")), 7))
    assert len(two[("raw", "NFQPROXY-SERVICES")]) == 4


def test_the_queue_chain_marks_the_source_as_kube_proxys_ext_chain_tells_them_apart() -> None:
    """From this node (addrtype LOCAL); with --cluster-cidr, off the cluster unless the
    source is inside a cluster CIDR, which sets the pod bit and clears that one."""
    marks = MarkLayout()
    bare = [" ".join(r) for r in chain_rules(HookConfig((), 7))[("raw", "NFQPROXY-QUEUE")]]
    node = f"{marks.source_node:#x}"
    assert bare[0] == f"-m addrtype --src-type LOCAL -j MARK --set-xmark {node}/{node}"
    assert len(bare) == 2  # no cluster CIDR: no source is called in or out of the cluster
    cidrs = (IPv4Network("10.244.0.0/16"), IPv4Network("10.245.0.0/16"))
    rules = chain_rules(HookConfig((), 7, cluster_cidrs=cidrs))[("raw", "NFQPROXY-QUEUE")]
    pod, off = marks.source_pod, marks.source_off_cluster
    assert [" ".join(r) for r in rules[1:4]] == [
        f"-j MARK --set-xmark {off:#x}/{off:#x}",
        f"-s 10.244.0.0/16 -j MARK --set-xmark {pod:#x}/{pod | off:#x}",
        f"-s 10.245.0.0/16 -j MARK --set-xmark {pod:#x}/{pod | off:#x}",
    ]


def test_every_jump_targets_an_owned_chain_in_its_own_table() -> None:
    assert {(table, chain) for table, _, chain in JUMPS} | set(INNER_CHAINS) == set(OWNED_CHAINS)


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
    config = HookConfig(
        (IPv4Network("10.96.0.0/12"),),
        100,
        marks=MarkLayout(0xFFC0),
        queues=4,
        first_packets_only=True,
    )
    rules = chain_rules(config)
    assert set(rules) == {
        ("mangle", "NFQPROXY-FIRST"),
        ("mangle", "NFQPROXY-QUEUE"),
        ("nat", "NFQPROXY-DECIDED"),
        ("nat", "NFQPROXY-HAIRPIN"),
        ("filter", "NFQPROXY-FORWARD"),
        ("filter", "NFQPROXY-REJECT"),
    }
    first = " ".join(rules[("mangle", "NFQPROXY-FIRST")][1])
    assert first.startswith("-d 10.96.0.0/12")
    assert "--ctstate NEW -m connmark ! --mark 0x40/0x40" in first
    assert first.endswith("-j NFQPROXY-QUEUE")
    queue = " ".join(rules[("mangle", "NFQPROXY-QUEUE")][-1])
    assert queue.endswith("--queue-balance 100:103 --queue-cpu-fanout")
    decided = " ".join(rules[("nat", "NFQPROXY-DECIDED")][0])
    assert decided.endswith("--save-mark --nfmask 0xffc0 --ctmask 0xffc0")
    assert len(jumps(config)) == 9


def test_an_ipv6_range_gets_the_same_rules_through_ip6tables_and_its_own_sets() -> None:
    config = HookConfig(
        (IPv4Network("10.96.0.0/12"), IPv6Network("fd00:96::/108")),
        7,
        "iptables-nft",
        cluster_cidrs=(IPv4Network("10.244.0.0/16"), IPv6Network("fd00:244::/56")),
    )
    assert families(config) == [4, 6] and command(config, 6) == "ip6tables-nft"
    v4 = {k: [" ".join(r) for r in v] for k, v in chain_rules(config, 4).items()}
    v6 = {k: [" ".join(r) for r in v] for k, v in chain_rules(config, 6).items()}
    assert v4.keys() == v6.keys()
    assert all(len(v4[chain]) == len(v6[chain]) for chain in v4)  # as fixed as IPv4's
    text6 = "\n".join(r for rules in v6.values() for r in rules)
    assert "-d fd00:96::/108 " in text6 and "10.96.0.0/12" not in text6
    assert "-s fd00:244::/56 " in text6 and "10.244.0.0/16" not in text6
    assert "nfqproxy-frontends-v6 dst,dst" in text6 and "nfqproxy-fw-v6 " in text6
    assert "icmp6-port-unreachable" in text6 and "icmp-port-unreachable" not in text6
    assert families(HookConfig((IPv6Network("fd00:96::/108"),), 7)) == [6]


def test_ipv6_frontends_go_to_the_v6_sets() -> None:
    port = ServicePort(
        "d/web:http",
        ip_address("2001:db8::9"),
        "TCP",
        80,
        (),
        kind="ExternalIP",
        policy="external-cluster",
    )
    entries = ipsets.port_entries(port)
    assert entries.frontends == frozenset({"2001:db8::9,tcp:80"})
    assert ipsets.set_name(ipsets.FRONTENDS, 6) == "nfqproxy-frontends-v6"


def test_a_missing_ip6tables_is_nothing_to_remove_but_an_error_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """remove() and `nfqproxy cleanup` try both families: on a host without ip6tables the
    IPv6 half has nothing of ours, and the IPv4 half must still go."""
    from nfqproxy import hooks

    monkeypatch.setitem(hooks.IP6TABLES, "iptables", "/nonexistent/ip6tables")
    manager = hooks.HookManager(HookConfig((IPv4Network("10.96.0.0/12"),), 7))
    assert manager._iptables(6, "filter", "-F", "NFQPROXY-REJECT", check=False) is False
    with pytest.raises(hooks.HookError, match="is not installed"):
        manager._iptables(6, "filter", "-F", "NFQPROXY-REJECT")
