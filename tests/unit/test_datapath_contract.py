"""The fast path's C side against the data-path contract (nfqproxy.datapath.verdicts, flows,
hashing): its name tables, which name its enums by position, and its hash.

A reason, state or counter added, removed or moved on one side only fails here instead of
mislabelling counters; a hash that drifts fails here instead of sending a flow to another
backend than the other nodes pick.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfqproxy.datapath import hashing
from nfqproxy.datapath.fast.datapath import fast_path_available
from nfqproxy.datapath.flows import FlowState, Timeouts
from nfqproxy.datapath.verdicts import EVENT_COUNTERS, REASONS, Action

try:
    import nfqproxy._fastpath as _fastpath
except ModuleNotFoundError:  # not built: every test here is skipped
    _fastpath = None  # type: ignore[assignment]
# Any other ImportError is a built module that refuses to load (a name table whose length
# differs from its enum's): it must fail here, not skip as fast_path_available() would.

pytestmark = pytest.mark.skipif(
    not fast_path_available(),
    reason="the fast path extension nfqproxy._fastpath is not built "
    "(or NFQPROXY_NO_EXTENSIONS=1): `make install` builds it",
)

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
IPV4 = st.binary(min_size=4, max_size=4)
PORT = st.integers(min_value=0, max_value=65535)


def test_the_action_names_are_the_contracts_in_its_order() -> None:
    assert tuple(action.value for action in Action) == _fastpath.ACTION_NAMES


def test_the_reason_names_are_the_contracts_one_for_one() -> None:
    assert REASONS == _fastpath.REASON_NAMES


def test_the_state_names_are_the_contracts_in_its_order() -> None:
    assert tuple(state.value for state in FlowState) == _fastpath.STATE_NAMES


def test_the_event_counter_names_are_the_contracts_in_its_order() -> None:
    assert EVENT_COUNTERS == _fastpath.EVENT_COUNTER_NAMES


def test_the_timeouts_reach_c_in_state_order() -> None:
    # C indexes Timeouts.in_state_order() by state: its fields must follow FlowState.
    assert [field.name for field in fields(Timeouts)] == [state.name.lower() for state in FlowState]
    assert len(Timeouts().in_state_order()) == len(_fastpath.STATE_NAMES)
    with pytest.raises(ValueError, match="timeouts"):
        _fastpath.FastCore([], 16, Timeouts().in_state_order()[:-1], 0)


def test_the_queue_reports_every_statistic_by_name() -> None:
    names = _fastpath.QUEUE_STAT_NAMES
    assert len(set(names)) == len(names)
    core = _fastpath.FastCore([], 16, Timeouts().in_state_order(), 0)
    assert _fastpath.FastQueue(core, 0, 16, 7, 1, 2, 4).stats() == dict.fromkeys(names, 0)


def test_the_c_hash_values_are_pinned() -> None:
    # The values test_maglev.py pins for the Python spec.
    assert _fastpath.hash64(b"", 0) == 0xF52A15E9A9B5E89B
    assert _fastpath.hash64(b"10.244.1.2:8080", 0) == 0xC916D198892A86FD
    assert _fastpath.hash64(b"10.244.1.2:8080", 42) == 0xD08A95DE217F715E
    client, vip = bytes([10, 244, 1, 2]), bytes([10, 96, 0, 10])
    assert _fastpath.flow_hash(6, client, 40000, vip, 80, 0) == 0x5A1689D74B0825E0


@given(data=st.binary(max_size=100), seed=UINT64)
def test_the_c_hash64_is_the_specs(data: bytes, seed: int) -> None:
    assert _fastpath.hash64(data, seed) == hashing.hash64(data, seed)


@given(
    proto=st.integers(min_value=0, max_value=255),
    src=IPV4,
    sport=PORT,
    dst=IPV4,
    dport=PORT,
    seed=UINT64,
)
def test_the_c_flow_hash_is_the_specs(
    proto: int, src: bytes, sport: int, dst: bytes, dport: int, seed: int
) -> None:
    assert _fastpath.flow_hash(proto, src, sport, dst, dport, seed) == hashing.flow_hash(
        proto, src, sport, dst, dport, seed
    )
