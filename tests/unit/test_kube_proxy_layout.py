"""kube-proxy's rules, the benchmarks' competitor: names, balancing, rejects, partial syncs."""

from __future__ import annotations

import re

from nfqproxy_lab.kube_proxy_rules import (
    KubeService,
    nft_restore_all,
    nft_restore_change,
    restore_all,
    restore_change,
)

WEB = KubeService(
    "shop/web:http",
    "10.96.0.10",
    80,
    "tcp",
    (("10.1.0.1", 8080), ("10.1.0.2", 8080), ("10.1.0.3", 8080)),
)
EMPTY = KubeService("shop/empty:http", "10.96.0.20", 80, "tcp", ())


def test_chains_are_named_from_16_base32_characters_of_sha256() -> None:
    assert re.fullmatch(r"KUBE-SVC-[A-Z2-7]{16}", WEB.chain)
    assert WEB.chain == "KUBE-SVC-" + WEB.chain.removeprefix("KUBE-SVC-")
    assert len(set(WEB.endpoint_chains())) == 3
    assert all(re.fullmatch(r"KUBE-SEP-[A-Z2-7]{16}", c) for c in WEB.endpoint_chains())


def test_endpoints_are_picked_with_10_decimal_probabilities_and_the_last_unconditionally() -> None:
    picks = [r for r in restore_all([WEB]).splitlines() if r.startswith(f"-A {WEB.chain} ")]
    assert "--probability 0.3333333333 " in picks[0]
    assert "--probability 0.5000000000 " in picks[1]
    assert "statistic" not in picks[2] and picks[2].endswith(WEB.endpoint_chains()[2])


def test_each_endpoint_chain_marks_hairpin_traffic_and_dnats() -> None:
    rules = restore_all([WEB]).splitlines()
    sep = WEB.endpoint_chains()[0]
    own = [r for r in rules if r.startswith(f"-A {sep} ")]
    assert "-s 10.1.0.1/32 -j KUBE-MARK-MASQ" in own[0]
    assert own[1].endswith("-j DNAT --to-destination 10.1.0.1:8080")


def test_a_service_without_endpoints_is_rejected_in_the_filter_table_only() -> None:
    text = restore_all([WEB, EMPTY])
    filter_table, nat_table = text.split("*nat")
    assert '"shop/empty:http has no endpoints"' in filter_table and "-j REJECT" in filter_table
    assert "10.96.0.20" not in nat_table


def test_a_partial_sync_rewrites_the_portals_and_the_changed_service_and_drops_stale_chains() -> (
    None
):
    moved = KubeService(
        WEB.name, WEB.vip, WEB.port, WEB.protocol, (*WEB.endpoints[:2], ("10.1.0.9", 8080))
    )
    text = restore_change([moved], WEB, moved)
    assert text.startswith("*nat\n:KUBE-SERVICES - [0:0]\n") and text.endswith("COMMIT\n")
    assert f"-X {WEB.endpoint_chains()[2]}" in text
    assert f":{moved.endpoint_chains()[2]} - [0:0]" in text
    assert "*filter" not in text


def test_the_nftables_layout_maps_vips_to_service_chains_and_rejects_empty_services() -> None:
    text = nft_restore_all([WEB, EMPTY])
    assert "10.96.0.10 . tcp . 80 : goto service-" in text
    assert "10.96.0.20 . tcp . 80 : goto reject-chain" in text
    assert "numgen random mod 3 vmap" in text
    moved = KubeService(WEB.name, WEB.vip, WEB.port, WEB.protocol, WEB.endpoints[:2])
    change = nft_restore_change(WEB, moved)
    assert "numgen random mod 2 vmap" in change and change.count("delete chain") == 1


def test_a_node_port_is_one_rule_in_kube_nodeports_reached_after_every_cluster_ip() -> None:
    """kube-proxy's iptables mode: KUBE-NODEPORTS, the last rule of KUBE-SERVICES (local
    destinations), one rule per NodePort to its KUBE-EXT chain: masquerade, then KUBE-SVC."""
    web = KubeService(WEB.name, WEB.vip, WEB.port, WEB.protocol, WEB.endpoints, 30080)
    rules = restore_all([web, EMPTY]).splitlines()
    portals = [r for r in rules if r.startswith("-A KUBE-SERVICES ")]
    assert portals[-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    assert [r for r in rules if r.startswith("-A KUBE-NODEPORTS ")] == [
        f'-A KUBE-NODEPORTS -m comment --comment "{web.name}" -m tcp -p tcp --dport 30080 '
        f"-j {web.external_chain}"
    ]
    external = [r for r in rules if r.startswith(f"-A {web.external_chain} ")]
    assert external[0].endswith("-j KUBE-MARK-MASQ") and external[1].endswith(f"-j {web.chain}")
    assert f":{web.external_chain} - [0:0]" in rules


def test_the_nftables_layout_maps_node_ports_on_the_node_addresses() -> None:
    web = KubeService(WEB.name, WEB.vip, WEB.port, WEB.protocol, WEB.endpoints, 30080)
    text = nft_restore_all([web, EMPTY], ("10.255.255.1",))
    assert "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports" in text
    assert "add element ip kube-proxy nodeport-ips { 10.255.255.1 }" in text
    assert "tcp . 30080 : goto external-" in text
