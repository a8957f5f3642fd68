"""--nodeport-addresses and --node-ip, in both families."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from nfqproxy import node_addresses
from nfqproxy.node_addresses import PRIMARY, parse_node_ips, parse_nodeport_addresses, resolve


def test_cidrs_of_both_families_and_primary_are_taken() -> None:
    assert parse_nodeport_addresses(["10.0.0.0/8,fd00::/64"]) == (
        ip_network("10.0.0.0/8"),
        ip_network("fd00::/64"),
    )
    assert parse_nodeport_addresses([]) == (PRIMARY,)
    with pytest.raises(ValueError, match="cannot be combined"):
        parse_nodeport_addresses(["primary", "10.0.0.0/8"])
    with pytest.raises(ValueError, match="neither a CIDR"):
        parse_nodeport_addresses(["10.0.0.0/33"])


def test_node_ips_are_one_per_family() -> None:
    assert parse_node_ips(["10.1.2.3,fd00::3"]) == (ip_address("10.1.2.3"), ip_address("fd00::3"))
    with pytest.raises(ValueError, match="one address per family"):
        parse_node_ips(["10.1.2.3", "10.1.2.4"])
    with pytest.raises(ValueError, match="not an IP address"):
        parse_node_ips(["node-1"])


def test_primary_takes_each_served_familys_node_ip_else_its_default_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = {4: ip_address("10.9.9.9"), 6: ip_address("fd00:9::9")}
    monkeypatch.setattr(node_addresses, "default_route_source", routes.get)
    given = (ip_address("10.1.2.3"),)
    assert resolve((PRIMARY,), given, (4,)) == (ip_address("10.1.2.3"),)
    assert resolve((PRIMARY,), given, (4, 6)) == (ip_address("10.1.2.3"), ip_address("fd00:9::9"))
    assert resolve((PRIMARY,), (), (6,)) == (ip_address("fd00:9::9"),)


def test_cidrs_pick_local_addresses_of_the_served_families_never_link_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = {
        4: [(ip_address("10.0.0.5"), 2), (ip_address("127.0.0.1"), 1)],
        6: [(ip_address("fd00::5"), 2), (ip_address("fe80::5"), 2), (ip_address("::1"), 1)],
    }
    monkeypatch.setattr(node_addresses, "local_addresses", local.__getitem__)
    everything = parse_nodeport_addresses(["0.0.0.0/0,::/0"])
    assert resolve(everything, (), (4, 6)) == (ip_address("10.0.0.5"), ip_address("fd00::5"))
    assert resolve(everything, (), (4,)) == (ip_address("10.0.0.5"),)
