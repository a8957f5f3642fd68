# Included by fastpath.pyx. Checksums: incremental updates for the rewrites (RFC 1624), as
# nfqproxy.datapath.reference.checksum, and a full TCP/UDP sum for CHECKSUM_PARTIAL packets.

cdef inline uint16_t checksum_replace(uint16_t check, const uint8_t *old, const uint8_t *new,
                                      int length) noexcept nogil:
    """RFC 1624 eqn. 3 over big-endian 16-bit words, as checksum.checksum_replace."""
    cdef uint32_t total = (~check) & 0xFFFF
    cdef int i
    for i in range(0, length, 2):
        total += ((~rd16(old + i)) & 0xFFFF) + rd16(new + i)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


cdef inline uint64_t native_sum(const uint8_t *p, uint32_t n) noexcept nogil:
    """One's complement sum of p in native byte order, 32 bits at a time (RFC 1071 4.1)."""
    cdef uint64_t acc = 0
    cdef uint32_t word
    cdef uint16_t half = 0
    while n >= 4:
        memcpy(&word, p, 4)
        acc += word
        p += 4
        n -= 4
    if n >= 2:
        memcpy(&half, p, 2)
        acc += half
        p += 2
        n -= 2
    if n:
        half = 0
        memcpy(&half, p, 1)  # the odd byte, padded with a zero byte after it
        acc += half
    return acc


cdef inline uint16_t fold_to_big_endian(uint64_t acc) noexcept nogil:
    cdef uint16_t one = 1
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    if (<uint8_t *> &one)[0] == 1:  # little-endian: the sum of swapped words is swapped
        acc = ((acc & 0xFF) << 8) | (acc >> 8)
    return <uint16_t> acc


cdef inline uint16_t full_l4_checksum(uint8_t *pkt, uint32_t hl, uint8_t proto) noexcept nogil:
    """The TCP or UDP checksum of the segment, computed from scratch with its field zeroed."""
    cdef uint32_t total = rd16(pkt + 2)
    cdef uint32_t length = total - hl
    cdef uint8_t *l4 = pkt + hl
    cdef int sum_at = 16 if proto == PROTO_TCP else 6
    cdef uint64_t acc
    wr16(l4 + sum_at, 0)
    acc = fold_to_big_endian(native_sum(l4, length))
    acc += rd16(pkt + 12) + rd16(pkt + 14) + rd16(pkt + 16) + rd16(pkt + 18) + proto + length
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    acc = (~acc) & 0xFFFF
    if proto == PROTO_UDP and acc == 0:
        acc = 0xFFFF
    return <uint16_t> acc

