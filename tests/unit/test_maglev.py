"""Maglev quality: balance, minimal disruption and determinism."""

import os
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfqproxy.datapath import maglev
from nfqproxy.datapath.hashing import flow_hash, hash64
from nfqproxy.datapath.maglev import TABLE_SIZES, MaglevSelector, build_table, table_size_for

VIP = bytes([10, 96, 0, 10])


def synthetic_flows(count: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [
        flow_hash(6, rng.randbytes(4), rng.randrange(1024, 65536), VIP, 80, 0) for _ in range(count)
    ]


def backends(count: int) -> list[str]:
    return [f"10.244.{i}.2:8080" for i in range(count)]


def test_slot_counts_per_backend_differ_by_at_most_one() -> None:
    for count in (1, 2, 3, 10, 100, 700):
        counts = Counter(MaglevSelector(backends(count)).table)
        assert len(counts) == count
        assert max(counts.values()) - min(counts.values()) <= 1


def test_every_backend_is_within_one_percent_of_its_fair_share() -> None:
    for count in (3, 10, 100):
        table = MaglevSelector(backends(count)).table
        fair = len(table) / count
        assert max(Counter(table).values()) <= fair * 1.01


def test_removing_one_of_ten_backends_remaps_at_most_15_percent_of_the_other_flows() -> None:
    names = backends(10)
    before = MaglevSelector(names)
    removed = 4
    after = MaglevSelector(names[:removed] + names[removed + 1 :])
    kept = moved = 0
    for flow in synthetic_flows(100_000):
        old = before.backends[before.select(flow)]
        if old == names[removed]:
            continue
        kept += 1
        moved += after.backends[after.select(flow)] != old
    assert moved / kept <= 0.15, f"{moved / kept:.1%} of unaffected flows moved"


def test_table_is_the_same_whatever_order_the_backends_arrive_in() -> None:
    names = backends(10)
    shuffled = names[:]
    random.Random(3).shuffle(shuffled)
    assert MaglevSelector(names).table == MaglevSelector(shuffled).table


def test_hash_values_are_pinned_so_every_node_and_the_fast_path_agree() -> None:
    assert hash64(b"", 0) == 0xF52A15E9A9B5E89B
    assert hash64(b"10.244.1.2:8080", 0) == 0xC916D198892A86FD
    assert hash64(b"10.244.1.2:8080", 42) == 0xD08A95DE217F715E
    client = bytes([10, 244, 1, 2])
    assert flow_hash(6, client, 40000, VIP, 80, 0) == 0x5A1689D74B0825E0


def test_table_size_keeps_at_least_100_slots_per_backend_and_is_stable_for_small_services() -> None:
    assert table_size_for(1) == table_size_for(10) == 1021
    assert table_size_for(11) >= 1100
    assert table_size_for(100_000) == 65537


def test_a_size_that_is_not_prime_is_refused() -> None:
    with pytest.raises(ValueError, match="prime"):
        build_table(["a"], 1000)


def test_no_backends_selects_nothing() -> None:
    assert MaglevSelector([]).select(12345) == -1


names_strategy = st.lists(
    st.text(alphabet="0123456789abcdef.:[]", min_size=1, max_size=24),
    min_size=0,
    max_size=40,
    unique=True,
)


@pytest.mark.skipif(maglev._COMPILED_BUILDER is None, reason="the Cython extension is not built")
@given(names_strategy, st.sampled_from(TABLE_SIZES[:3]), st.integers(0, 2**64 - 1))
@settings(max_examples=60, deadline=None)
def test_the_compiled_builder_gives_the_reference_tables(
    names: list[str], size: int, seed: int
) -> None:
    assert maglev.build_table(names, size, seed) == maglev.build_table_reference(names, size, seed)


def test_the_extension_is_built_in_a_full_install() -> None:
    # make install always builds it; only NFQPROXY_NO_EXTENSIONS=1 may turn it off.
    if os.environ.get("NFQPROXY_NO_EXTENSIONS") == "1":
        assert maglev._COMPILED_BUILDER is None
    else:
        assert maglev._COMPILED_BUILDER is not None


def test_tables_for_10k_services_of_3_backends_fit_in_about_20_mb() -> None:
    selectors = [
        MaglevSelector([f"10.{i // 250}.{i % 250}.{b}:80" for b in range(3)]) for i in range(10_000)
    ]
    table_bytes = sum(s.table.itemsize * len(s.table) for s in selectors)
    assert table_bytes == 10_000 * 1021 * 2


def test_the_fast_path_is_built_in_a_full_install() -> None:
    from nfqproxy.datapath.fast.datapath import fast_path_available

    assert fast_path_available() == (os.environ.get("NFQPROXY_NO_EXTENSIONS") != "1")
