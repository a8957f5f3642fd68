# The seeded hash of nfqproxy.datapath.hashing (FNV-1a 64, then the splitmix64 finaliser)
# in C: one definition, inlined into every extension that cimports it (maglev.pyx for the
# tables, fastpath.pyx for a new flow's slot). Every node must pick the same backend for a
# flow, so this must equal the Python spec bit for bit: test_datapath_contract.py checks it
# on random inputs through the fast path's hash64/flow_hash wrappers, test_maglev.py through
# the tables. The seeds are derived in Python (hashing.SEED_*) and passed in.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef inline uint64_t mix64(uint64_t value) noexcept nogil:
    """splitmix64's finaliser: a bijection on 64-bit integers with good avalanche."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ULL
    value = (value ^ (value >> 27)) * 0x94D049BB133111EBULL
    return value ^ (value >> 31)


cdef inline uint64_t hash64(const uint8_t *data, size_t length, uint64_t seed) noexcept nogil:
    """hashing.hash64: FNV-1a 64 from the offset basis xor seed, then mix64."""
    cdef uint64_t value = 0xCBF29CE484222325ULL ^ seed  # the FNV-64 offset basis
    cdef size_t i
    for i in range(length):
        value = (value ^ data[i]) * 0x100000001B3ULL  # the FNV-64 prime
    return mix64(value)


cdef inline uint64_t flow_hash(uint8_t proto, const uint8_t *src, uint16_t sport,
                               const uint8_t *dst, uint16_t dport, size_t size,
                               uint64_t flow_seed) noexcept nogil:
    """hashing.flow_hash with its seed ^ SEED_FLOW done by the caller (flow_seed), once per
    table rather than once per packet. src and dst: size (4 or 16) bytes of address as they
    sit in the packet; ports in host order. The bytes hashed are src, dst, sport, dport
    (big-endian), proto."""
    cdef uint8_t buf[37]
    memcpy(buf, src, size)
    memcpy(buf + size, dst, size)
    buf[2 * size] = sport >> 8
    buf[2 * size + 1] = sport & 0xFF
    buf[2 * size + 2] = dport >> 8
    buf[2 * size + 3] = dport & 0xFF
    buf[2 * size + 4] = proto
    return hash64(buf, 2 * size + 5, flow_seed)
