# cython: language_level=3
"""Maglev table population in C: the same tables as nfqproxy.datapath.maglev, faster.

The hash (includes/hashing.pxd: FNV-1a 64 + splitmix64 finaliser) and the turn-taking fill
must match the pure Python reference exactly; tests/unit/test_maglev.py compares them on
random inputs.
"""

from cpython.array cimport array, clone
from libc.stdint cimport uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc

from includes.hashing cimport hash64

from nfqproxy.datapath.hashing import SEED_OFFSET, SEED_SKIP

cdef enum:
    EMPTY = 0xFFFF  # a slot not yet claimed (maglev.EMPTY)


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
            offsets[i] = hash64(<const uint8_t *> <const char *> encoded, len(encoded),
                                seed_offset) % size
            skips[i] = hash64(<const uint8_t *> <const char *> encoded, len(encoded),
                              seed_skip) % (size - 1) + 1
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
