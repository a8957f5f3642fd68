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


cdef inline uint16_t full_l4_checksum(uint8_t *pkt, Headers *h) noexcept nogil:
    """The TCP or UDP checksum of the segment, computed from scratch with its field zeroed;
    the pseudo-header of either family (the addresses, the upper-layer length, proto)."""
    cdef uint32_t length = h.total - h.hl, i, at = source_at(h.version)
    cdef uint8_t *l4 = pkt + h.hl
    cdef int sum_at = 16 if h.proto == PROTO_TCP else 6
    cdef uint64_t acc
    wr16(l4 + sum_at, 0)
    acc = fold_to_big_endian(native_sum(l4, length))
    for i in range(0, 2 * address_size(h.version), 2):
        acc += rd16(pkt + at + i)
    acc += h.proto + length
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    acc = (~acc) & 0xFFFF
    if h.proto == PROTO_UDP and acc == 0:
        acc = 0xFFFF
    return <uint16_t> acc


# --- SCTP's CRC32c (RFC 9260 appendix B): Castagnoli, reflected, table-driven -------------

cdef uint32_t CRC32C_TABLE[256]


cdef void crc32c_init() noexcept:
    cdef uint32_t i, crc
    cdef int bit
    for i in range(256):
        crc = i
        for bit in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        CRC32C_TABLE[i] = crc


cdef inline uint32_t crc32c_update(uint32_t crc, const uint8_t *p, uint32_t n) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        crc = CRC32C_TABLE[(crc ^ p[i]) & 0xFF] ^ (crc >> 8)
    return crc


cdef inline uint32_t sctp_crc(const uint8_t *l4, uint32_t length) noexcept nogil:
    """CRC32c over the SCTP packet with its checksum field taken as zero (reference
    packet._sctp_crc)."""
    cdef uint8_t zero[4]
    cdef uint32_t crc = 0xFFFFFFFF
    memset(zero, 0, 4)
    crc = crc32c_update(crc, l4, 8)
    crc = crc32c_update(crc, zero, 4)
    crc = crc32c_update(crc, l4 + 12, length - 12)
    return ~crc


cdef inline uint32_t rd32le(const uint8_t *p) noexcept nogil:
    return (<uint32_t> p[3] << 24) | (<uint32_t> p[2] << 16) | (<uint32_t> p[1] << 8) | p[0]


cdef inline void wr32le(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = v >> 24
