from hypothesis import given
from hypothesis import strategies as st

from nfqproxy.datapath.reference.checksum import checksum_replace, internet_checksum

even_bytes = st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.binary(min_size=2 * n, max_size=2 * n)
)


@given(even_bytes, st.data())
def test_incremental_update_matches_full_recompute(data: bytes, draw: st.DataObject) -> None:
    words = len(data) // 2
    start = draw.draw(st.integers(0, words - 1)) * 2
    length = draw.draw(st.integers(1, words - start // 2)) * 2
    new_field = draw.draw(st.binary(min_size=length, max_size=length))
    changed = data[:start] + new_field + data[start + length :]
    incremental = checksum_replace(internet_checksum(data), data[start : start + length], new_field)
    full = internet_checksum(changed)
    # One's complement has two zeros; both checksums must verify the same data.
    assert incremental == full or {incremental, full} == {0x0000, 0xFFFF}


def test_known_ipv4_header_checksum() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
