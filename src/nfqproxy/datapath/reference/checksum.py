"""Internet checksum arithmetic (RFC 1071) and incremental update (RFC 1624).

The kernel does not fix checksums after a queue verdict changes the payload, so every
rewrite patches them. Patching costs a few additions; a full recompute walks the packet.
"""

from __future__ import annotations


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_complement_sum(data: bytes) -> int:
    """The folded 16-bit one's complement sum of data, padded with a zero byte if odd."""
    if len(data) % 2:
        data += b"\x00"
    return _fold(sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)))


def internet_checksum(data: bytes) -> int:
    """The checksum field value for data whose checksum field is zero (RFC 1071)."""
    return ~ones_complement_sum(data) & 0xFFFF


def checksum_replace(checksum: int, old: bytes, new: bytes) -> int:
    """The checksum after the bytes old are replaced by new (RFC 1624, eqn. 3).

    old and new have the same even length and start at an even offset in the summed data.
    """
    if len(old) != len(new) or len(old) % 2:
        raise ValueError("checksum_replace needs equal, even-length fields")
    total = ~checksum & 0xFFFF
    for i in range(0, len(old), 2):
        total += (~int.from_bytes(old[i : i + 2], "big") & 0xFFFF) + int.from_bytes(
            new[i : i + 2], "big"
        )
    return ~_fold(total) & 0xFFFF
