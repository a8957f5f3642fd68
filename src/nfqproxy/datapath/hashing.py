"""The explicit, seeded hash used for Maglev and flow selection.

Every node must build the same tables and pick the same backend for a flow, so the hash is
fixed by this file: FNV-1a 64 over the bytes, then the splitmix64 finaliser to spread the
bits. Python's hash() is salted per process and must never be used here. The fast path
implements the same function in C, and tests pin its values.
"""

from __future__ import annotations

import struct

MASK64 = (1 << 64) - 1
FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3

# Separate seeds for the two Maglev permutation parameters and the flow hash, derived from
# the one configured seed so that they are independent of each other.
SEED_OFFSET = 0x6F66667365742D31
SEED_SKIP = 0x736B69702D2D2D32
SEED_FLOW = 0x666C6F772D2D2D33


def mix64(value: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit integers with good avalanche."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def hash64(data: bytes, seed: int) -> int:
    """The seeded 64-bit hash of data."""
    value = FNV64_OFFSET ^ (seed & MASK64)
    for byte in data:
        value = ((value ^ byte) * FNV64_PRIME) & MASK64
    return mix64(value)


_FLOW_PORTS = struct.Struct("!HHB")


def flow_hash(proto: int, src: bytes, sport: int, dst: bytes, dport: int, seed: int) -> int:
    """The hash of a flow's 5-tuple as the client sent it (destination = VIP:port)."""
    return hash64(src + dst + _FLOW_PORTS.pack(sport, dport, proto), seed ^ SEED_FLOW)
