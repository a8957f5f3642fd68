"""The offload path's nf_tables text, in both families: the tables and chains, the map's
elements (each in its family's map), the owner comments a restart reads back, and the
validation that keeps anything but checked addresses and numbers out of nft's input. A
fake libnftables stands in for the kernel: nothing here is loaded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from ipaddress import ip_address
from typing import Any, ClassVar

import pytest

from nfqproxy.datapath.frontends import VARIANT_CLUSTER, Frontend
from nfqproxy.datapath.maglev import MaglevSelector
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.datapath.offload import nft
from nfqproxy.datapath.offload.backends import BackendIds
from nfqproxy.datapath.offload.nft import (
    BackendMap,
    Element,
    NftError,
    delete_table_commands,
    owner_comment,
    parse_map,
    parse_owner,
    parse_tables,
    table_commands,
    update_commands,
)


def packed(text: str) -> bytes:
    return ip_address(text).packed


VIP4, VIP6 = packed("10.96.0.10"), packed("fd00:10:96::10")
BE4, BE6 = packed("10.244.11.2"), packed("fd00:10:244:11::2")
V4: Element = ((BE4, 8080), (VIP4, 6, 80))
V6: Element = ((BE6, 8080), (VIP6, 6, 80))
IDS = f"{MarkLayout().id_mask:#010x}"
V4_JSON = {"concat": ["10.244.11.2", 8080]}  # V4's and V6's values as nft lists them
V6_JSON = {"concat": ["fd00:10:244:11::2", 8080]}


def test_the_ipv4_table_is_the_one_an_older_process_left() -> None:
    assert table_commands(MarkLayout()).splitlines() == [
        "add table ip nfqproxy",
        "add map ip nfqproxy backends { type mark : ipv4_addr . inet_service; }",
        "add chain ip nfqproxy prerouting { type nat hook prerouting priority -99; "
        "policy accept; }",
        "flush chain ip nfqproxy prerouting",
        f"add rule ip nfqproxy prerouting meta l4proto {{ tcp, udp, sctp }} "
        f"meta mark & {IDS} != 0 dnat ip to meta mark & {IDS} map @backends",
        "add chain ip nfqproxy output { type nat hook output priority -99; policy accept; }",
        "flush chain ip nfqproxy output",
        f"add rule ip nfqproxy output meta l4proto {{ tcp, udp, sctp }} "
        f"meta mark & {IDS} != 0 dnat ip to meta mark & {IDS} map @backends",
    ]


def test_the_ipv6_table_has_the_same_chains_an_ipv6_map_and_dnat_ip6() -> None:
    text = table_commands(MarkLayout(), 6)
    assert text == table_commands(MarkLayout(), 4).replace(" ip ", " ip6 ").replace(
        "ipv4_addr", "ipv6_addr"
    )
    assert f"dnat ip6 to meta mark & {IDS} map @backends" in text
    with pytest.raises(ValueError, match="neither 4 nor 6"):
        table_commands(MarkLayout(), 5)


def test_elements_go_to_the_map_of_their_family_removed_ones_first() -> None:
    variant = ((BE6, 53), (VIP6, 17 | VARIANT_CLUSTER, 53))
    text = update_commands({0x80: V6, 0x40: V4, 0xC0: variant}, {0x10000: V4, 0x20000: V6})
    assert text.splitlines() == [
        "delete element ip nfqproxy backends { 0x00010000 }",
        "delete element ip6 nfqproxy backends { 0x00020000 }",
        'add element ip nfqproxy backends { 0x00000040 comment "10.96.0.10:80/6" '
        ": 10.244.11.2 . 8080 }",
        'add element ip6 nfqproxy backends { 0x00000080 comment "[fd00:10:96::10]:80/6" '
        ': fd00:10:244:11::2 . 8080, 0x000000c0 comment "[fd00:10:96::10]:53/273" '
        ": fd00:10:244:11::2 . 53 }",
    ]
    assert update_commands({}, {}) == ""


@pytest.mark.parametrize(
    "key",
    [(VIP4, 6, 80), (VIP6, 17, 53), (VIP6, 132 | VARIANT_CLUSTER, 65535), (VIP4, 17, 0)],
)
def test_an_owner_comment_reads_back_as_its_service_port(key: tuple[bytes, int, int]) -> None:
    assert parse_owner(owner_comment(key)) == key


@pytest.mark.parametrize(
    "comment",
    [
        "",
        "web",
        "fd00::10:80/6",  # an IPv6 address without brackets: its port is not apart
        "[10.96.0.10]:80/6",
        "[fe80::1%eth0]:80/6",  # ipaddress would keep the zone
        "10.96.0.10:80",
        "10.96.0.10:70000/6",
        "[fd00::10]:80/6 and more",
    ],
)
def test_a_comment_not_written_by_us_names_no_owner(comment: str) -> None:
    assert parse_owner(comment) is None


@pytest.mark.parametrize(
    ("added", "message"),
    [
        ({0x40: ((BE4, 0), (VIP4, 6, 80))}, "backend port"),
        ({0x40: ((BE4, 65536), (VIP4, 6, 80))}, "backend port"),
        ({0x40: ((BE4, True), (VIP4, 6, 80))}, "backend port"),
        ({0x40: ((BE4, "80; flush ruleset"), (VIP4, 6, 80))}, "backend port"),
        ({0x40: ((b"\x0a\x00\x00", 80), (VIP4, 6, 80))}, "packed IPv4 or IPv6"),
        ({0x40: (("10.0.0.1", 80), (VIP4, 6, 80))}, "packed IPv4 or IPv6"),
        ({0x40: ((BE6, 8080), (VIP4, 6, 80))}, "not of the family"),
        ({0x40: ((BE4, 8080), (VIP4, 6, -1))}, "service port"),
        ({0: V4}, "mark"),
        ({1 << 32: V4}, "mark"),
    ],
)
def test_nothing_but_checked_addresses_and_numbers_reaches_nft(
    added: dict[int, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        update_commands(added, {})


def map_listing(family: str, elements: list[Any]) -> dict[str, Any]:
    """A map as libnftables lists it in JSON."""
    return {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"map": {"family": family, "name": "backends", "table": "nfqproxy", "elem": elements}},
        ]
    }


def test_an_ipv6_map_listing_reads_back_with_owners() -> None:
    listing = map_listing(
        "ip6",
        [
            [
                {"elem": {"val": 64, "comment": "[fd00:10:96::10]:80/6"}},
                {"concat": ["fd00:10:244:11::2", 8080]},
            ],
            [128, {"concat": ["fd00:10:244:12::2", 8080]}],  # no comment: not ours
            [
                {"elem": {"val": 192, "comment": "10.96.0.10:80/6"}},  # another family's
                {"concat": ["fd00:10:244:13::2", 53]},
            ],
        ],
    )
    unowned = (bytes(16), 0, 0)
    assert parse_map(listing, 6) == {
        64: V6,
        128: ((packed("fd00:10:244:12::2"), 8080), unowned),
        192: ((packed("fd00:10:244:13::2"), 53), unowned),
    }
    with pytest.raises(NftError, match="the ip map holds"):
        parse_map(listing, 4)


def tables_listing(*tables: tuple[str, str]) -> dict[str, Any]:
    return {"nftables": [{"table": {"family": f, "name": n, "handle": 1}} for f, n in tables]}


def test_our_tables_are_found_by_family_and_name() -> None:
    listing = tables_listing(("ip", "nfqproxy"), ("ip6", "nfqproxy"), ("inet", "nfqproxy"))
    assert parse_tables(listing) == {4, 6}
    assert parse_tables(tables_listing(("ip", "filter"), ("ip6", "nat"))) == set()
    assert parse_tables({}) == set()
    assert delete_table_commands({6, 4}) == "delete table ip nfqproxy\ndelete table ip6 nfqproxy\n"


class FakeNft:
    """libnftables as BackendMap calls it: the commands it is given, and canned listings."""

    # Class attributes: BackendMap makes its own instance; the fixture resets them.
    tables: ClassVar[set[tuple[str, str]]] = set()
    maps: ClassVar[dict[str, list[Any]]] = {}
    runs: ClassVar[list[str]] = []

    def run(self, commands: str, as_json: bool = False) -> str:
        FakeNft.runs.append(commands)
        if commands == "list tables":
            return json.dumps(tables_listing(*sorted(FakeNft.tables)))
        if commands.startswith("list map "):
            family = commands.split()[2]
            return json.dumps(map_listing(family, FakeNft.maps.get(family, [])))
        return ""

    def close(self) -> None:
        pass


@pytest.fixture
def fake_nft(monkeypatch: pytest.MonkeyPatch) -> type[FakeNft]:
    FakeNft.tables, FakeNft.maps, FakeNft.runs = set(), {}, []
    monkeypatch.setattr(nft, "_Libnftables", FakeNft)
    return FakeNft


def test_install_makes_the_tables_served_and_drops_a_family_no_longer_served(
    fake_nft: type[FakeNft],
) -> None:
    fake_nft.tables = {("ip6", "nfqproxy")}  # left by a run that served IPv6
    fake_nft.maps = {"ip": [[{"elem": {"val": 64, "comment": "10.96.0.10:80/6"}}, V4_JSON]]}
    assert BackendMap(MarkLayout(), {4}).install() == {64: V4}
    transaction = fake_nft.runs[1]
    assert transaction.startswith("delete table ip6 nfqproxy\nadd table ip nfqproxy\n")
    assert "ip6" not in transaction.split("\n", 1)[1]
    assert fake_nft.runs[2:] == ["list map ip nfqproxy backends"]

    fake_nft.runs = []
    fake_nft.maps["ip6"] = [[{"elem": {"val": 128, "comment": "[fd00:10:96::10]:80/6"}}, V6_JSON]]
    both = BackendMap(MarkLayout(), {4, 6})
    assert both.install() == {64: V4, 128: V6}
    assert fake_nft.runs[1] == table_commands(MarkLayout(), 4) + table_commands(MarkLayout(), 6)


def test_a_mark_that_moves_family_leaves_one_map_for_the_other(fake_nft: type[FakeNft]) -> None:
    fake_nft.maps = {"ip": [[{"elem": {"val": 64, "comment": "10.96.0.10:80/6"}}, V4_JSON]]}
    backends = BackendMap(MarkLayout(), {4, 6})
    backends.install()
    fake_nft.runs = []
    backends.update({64: V6}, [])
    assert fake_nft.runs == [
        "delete element ip nfqproxy backends { 0x00000040 }\n"
        'add element ip6 nfqproxy backends { 0x00000040 comment "[fd00:10:96::10]:80/6" '
        ": fd00:10:244:11::2 . 8080 }\n"
    ]
    assert backends.current == {64: V6}
    backends.update({}, [64, 128])  # 128 is not there: nothing to delete
    assert fake_nft.runs[-1] == "delete element ip6 nfqproxy backends { 0x00000040 }\n"
    assert backends.current == {}


def test_an_element_of_a_family_not_served_is_refused_before_nft(
    fake_nft: type[FakeNft],
) -> None:
    backends = BackendMap(MarkLayout(), {4})
    backends.install()
    fake_nft.runs = []
    with pytest.raises(ValueError, match="no map here"):
        backends.update({64: V6}, [])
    assert fake_nft.runs == [] and backends.current == {}
    with pytest.raises(ValueError, match="neither 4 nor 6"):
        BackendMap(MarkLayout(), {4, 5})


def test_cleanup_removes_both_families_tables_whichever_are_there(
    fake_nft: type[FakeNft],
) -> None:
    fake_nft.tables = {("ip", "nfqproxy"), ("ip6", "nfqproxy"), ("ip6", "other")}
    assert nft.remove_table()
    assert fake_nft.runs[-1] == "delete table ip nfqproxy\ndelete table ip6 nfqproxy\n"
    fake_nft.tables = {("ip6", "nfqproxy")}
    assert nft.remove_table()
    assert fake_nft.runs[-1] == "delete table ip6 nfqproxy\n"
    fake_nft.tables, fake_nft.runs = set(), []
    assert not nft.remove_table()
    assert fake_nft.runs == ["list tables"]


def frontend(backends: Sequence[bytes], draining: Sequence[bytes] = ()) -> Frontend:
    names = [str(ip_address(b)) for b in backends]
    return Frontend(
        "default/dns:dns",
        tuple((b, 5353) for b in backends),
        MaglevSelector(names),
        draining=tuple((b, 5353) for b in draining),
    )


def test_backend_ids_take_ipv6_backends_in_the_one_id_space() -> None:
    ids = BackendIds(MarkLayout())
    b1, b2 = packed("fd00:10:244:11::2"), packed("fd00:10:244:12::2")
    key6, key4 = (VIP6, 17, 53), (VIP4, 17, 53)
    plan = ids.plan({}, {key6: frontend([b1, b2]), key4: frontend([BE4])})
    ids.commit(plan)
    assert sorted(plan.added.values()) == [1, 2, 3]
    assert ids.owners[ids.ids[(key6, (b2, 5353))]] == (key6, (b2, 5353))
    # A UDP backend no longer chosen (draining) has its flows moved: in a cluster variant's
    # table too, whose protocol carries the variant's bit.
    variant = (VIP6, 17 | VARIANT_CLUSTER, 53)
    ids.commit(ids.plan({}, {variant: frontend([b1, b2])}))
    for key in (key6, variant):
        moved = ids.plan({key: frontend([b1, b2])}, {key: frontend([b1], [b2])})
        assert moved.unchosen_udp == {(key, (b2, 5353)): ids.ids[(key, (b2, 5353))]}
        assert not moved.leaving
