# cython: language_level=3
"""Maglev table population in C: the same tables as nfqproxy.datapath.maglev, faster.

The hash (FNV-1a 64 + splitmix64 finaliser) and the turn-taking fill must match the pure
Python reference exactly; tests/unit/test_maglev.py compares them on random inputs.
"""

from cpython.array cimport array, clone
from libc.stdint cimport uint16_t, uint64_t
from libc.stdlib cimport free, malloc

from nfqproxy.datapath.hashing import SEED_OFFSET, SEED_SKIP

cdef uint64_t FNV64_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t FNV64_PRIME = 0x100000001B3ULL
cdef uint16_t EMPTY = 0xFFFF


cdef inline uint64_t mix64(uint64_t value) noexcept nogil:
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ULL
    value = (value ^ (value >> 27)) * 0x94D049BB133111EBULL
    return value ^ (value >> 31)


cdef uint64_t hash64(const unsigned char[:] data, uint64_t seed) noexcept nogil:
    cdef uint64_t value = FNV64_OFFSET ^ seed
    cdef Py_ssize_t i
    for i in range(data.shape[0]):
        value = (value ^ data[i]) * FNV64_PRIME
    return mix64(value)


def build_table(list ordered_names, unsigned int size, unsigned long long seed):
    """The slot -> backend index table for names already sorted; size must be prime."""
    cdef Py_ssize_t count = len(ordered_names)
    cdef array template = array("H")
    if count == 0:
        return template
    cdef array table = clone(template, size, False)
    cdef uint16_t[:] slots = table
    cdef uint64_t *offsets = <uint64_t *> malloc(count * sizeof(uint64_t))
    cdef uint64_t *skips = <uint64_t *> malloc(count * sizeof(uint64_t))
    cdef uint64_t *next_step = <uint64_t *> malloc(count * sizeof(uint64_t))
    cdef uint64_t seed_offset = (seed ^ SEED_OFFSET) & 0xFFFFFFFFFFFFFFFF
    cdef uint64_t seed_skip = (seed ^ SEED_SKIP) & 0xFFFFFFFFFFFFFFFF
    cdef Py_ssize_t i
    cdef unsigned int filled = 0, slot
    cdef bytes encoded
    if offsets == NULL or skips == NULL or next_step == NULL:
        free(offsets); free(skips); free(next_step)
        raise MemoryError()
    try:
        for i in range(count):
            encoded = ordered_names[i].encode()
            offsets[i] = hash64(encoded, seed_offset) % size
            skips[i] = hash64(encoded, seed_skip) % (size - 1) + 1
        with nogil:
            for slot in range(size):
                slots[slot] = EMPTY
            # next_step[i] holds backend i's current position in its permutation,
            # offset + j * skip (mod size), advanced by adding skip: no multiply or divide.
            for i in range(count):
                next_step[i] = offsets[i]
            while True:
                for i in range(count):
                    slot = <unsigned int> next_step[i]
                    while slots[slot] != EMPTY:
                        slot += <unsigned int> skips[i]
                        if slot >= size:
                            slot -= size
                    slots[slot] = <uint16_t> i
                    slot += <unsigned int> skips[i]
                    next_step[i] = slot - size if slot >= size else slot
                    filled += 1
                    if filled == size:
                        break
                if filled == size:
                    break
    finally:
        free(offsets); free(skips); free(next_step)
    return table
