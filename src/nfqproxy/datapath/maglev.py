"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), the reference version.

Each backend walks its own permutation of the table slots; backends take turns claiming
their next free slot until the table is full. Turn-taking gives every backend either
floor(M/N) or ceil(M/N) slots, and removing one backend moves few slots of the others.

Table size: the spread between backends is at most one slot, so a table of at least
100 slots per backend keeps every backend within 1% of its fair share. Sizes are primes
(the permutation needs skip and M coprime) from a fixed ladder that roughly doubles, so
adding or removing one backend almost never changes M (a new M reshuffles every slot).
The ladder depends only on the backend count, so every node picks the same M. Slots hold
uint16 backend indexes: at 10k services that is 10k tables of 1021 slots, about 20 MB.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Sequence

from nfqproxy.datapath.hashing import SEED_OFFSET, SEED_SKIP, hash64

SLOTS_PER_BACKEND = 100
# Starts at 1021 so that services of up to 10 backends never change size as they scale.
TABLE_SIZES = (1021, 2039, 4093, 8191, 16381, 32749, 65537)
EMPTY = 0xFFFF
MAX_BACKENDS = EMPTY - 1


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def table_size_for(backend_count: int) -> int:
    """The first ladder size with SLOTS_PER_BACKEND slots per backend, else the largest.

    Past 655 backends the balance guarantee weakens to N/65537 (1.5% at 1000 backends).
    """
    want = SLOTS_PER_BACKEND * backend_count
    return next((size for size in TABLE_SIZES if size >= want), TABLE_SIZES[-1])


def build_table_reference(names: Sequence[str], size: int, seed: int = 0) -> array[int]:
    """The lookup table: slot -> index into sorted(names). Empty if there are no names.

    Raises ValueError for a size that is not prime or for more than MAX_BACKENDS names.

    names are sorted here so that every node, whatever order it learnt the backends in,
    builds the same table.
    """
    if size < 2 or not _is_prime(size):
        raise ValueError(f"Maglev table size must be a prime, got {size}")
    ordered = sorted(names)
    count = len(ordered)
    if count > MAX_BACKENDS:
        raise ValueError(f"Maglev supports at most {MAX_BACKENDS} backends, got {count}")
    if count == 0:
        return array("H")
    table = array("H", [EMPTY]) * size
    offsets = [hash64(name.encode(), seed ^ SEED_OFFSET) % size for name in ordered]
    skips = [hash64(name.encode(), seed ^ SEED_SKIP) % (size - 1) + 1 for name in ordered]
    next_step = [0] * count
    filled = 0
    while True:
        for i in range(count):
            slot = (offsets[i] + next_step[i] * skips[i]) % size
            while table[slot] != EMPTY:
                next_step[i] += 1
                slot = (offsets[i] + next_step[i] * skips[i]) % size
            table[slot] = i
            next_step[i] += 1
            filled += 1
            if filled == size:
                return table


def _compiled_builder() -> Callable[[list[str], int, int], array[int]] | None:
    """cext/maglev.pyx's builder, unless absent or NFQPROXY_NO_EXTENSIONS=1 forbids it."""
    if os.environ.get("NFQPROXY_NO_EXTENSIONS") == "1":
        return None
    try:
        from nfqproxy._maglev import build_table as compiled
    except ImportError:
        return None
    return compiled


_COMPILED_BUILDER = _compiled_builder()


def build_table(names: Sequence[str], size: int, seed: int = 0) -> array[int]:
    """As build_table_reference, in C when the extension is built (same tables)."""
    if _COMPILED_BUILDER is None:
        return build_table_reference(names, size, seed)
    if size < 2 or not _is_prime(size):
        raise ValueError(f"Maglev table size must be a prime, got {size}")
    if len(names) > MAX_BACKENDS:
        raise ValueError(f"Maglev supports at most {MAX_BACKENDS} backends, got {len(names)}")
    return _COMPILED_BUILDER(sorted(names), size, seed)


class MaglevSelector:
    """Picks a backend for a flow hash from a Maglev table over the given backends."""

    __slots__ = ("_shares", "backends", "table")

    def __init__(self, backends: Sequence[str], seed: int = 0, size: int | None = None) -> None:
        self.backends: tuple[str, ...] = tuple(sorted(backends))
        table_size = size if size is not None else table_size_for(len(self.backends))
        self.table = build_table(self.backends, table_size, seed)
        self._shares: tuple[float, ...] | None = None

    def shares(self) -> tuple[float, ...]:
        """Each backend's share of the table (what new flows get), counted once: the table
        never changes after it is built, and `nfqproxy services` asks for every one."""
        if self._shares is None:
            counts = [0] * len(self.backends)
            for index in self.table:
                counts[index] += 1
            self._shares = tuple(c / len(self.table) for c in counts)
        return self._shares

    def select(self, flow_hash: int) -> int:
        """The index in self.backends of the flow's backend, or -1 if there are none."""
        if not self.backends:
            return -1
        return self.table[flow_hash % len(self.table)]
