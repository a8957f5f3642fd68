# Included by fastpath.pyx. Packet fields, and the header checks of the reference's parser
# (nfqproxy.datapath.reference.packet) in its order, so that a malformed packet gets the same
# reason on both paths.

cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    """A big-endian 32-bit field in host order."""
    return (<uint32_t> p[0] << 24) | (<uint32_t> p[1] << 16) | (<uint32_t> p[2] << 8) | p[3]


cdef inline uint32_t rd32raw(const uint8_t *p) noexcept nogil:
    """A 32-bit field as it sits in the packet: addresses are kept so, and compared so."""
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline bint parse_ip(const uint8_t *pkt, uint32_t length, Headers *h,
                          Verdict *v) noexcept nogil:
    """Checks the IPv4 header; False with v.reason set if the packet fails a check.

    Sets v.length to the IP total length: what follows it (link padding) is not handed back.
    """
    cdef uint32_t hl, total
    if length < 20:
        v.reason = R_TRUNCATED_IP
        return False
    if pkt[0] >> 4 != 4:
        v.reason = R_NOT_IPV4
        return False
    hl = (pkt[0] & 0x0F) * 4
    if hl < 20:
        v.reason = R_BAD_IHL
        return False
    if hl > length:
        v.reason = R_TRUNCATED_IP
        return False
    total = rd16(pkt + 2)
    if total < hl or total > length:
        v.reason = R_BAD_LENGTH
        return False
    v.length = total
    if rd16(pkt + 6) & 0x3FFF:
        v.reason = R_FRAGMENT
        return False
    h.hl, h.total, h.proto = hl, total, pkt[9]
    return True


cdef inline bint parse_ports(const uint8_t *pkt, Headers *h, Verdict *v) noexcept nogil:
    """For TCP or UDP after parse_ip: checks the L4 header fits, then reads the addresses,
    ports and TCP flags; False with v.reason set if the header does not fit."""
    cdef uint32_t hl = h.hl
    cdef uint32_t l4_length = h.total - hl
    h.flags = 0
    if h.proto == PROTO_TCP:
        if l4_length < 20 or (pkt[hl + 12] >> 4) * 4 < 20 or (pkt[hl + 12] >> 4) * 4 > l4_length:
            v.reason = R_TRUNCATED_L4
            return False
        h.flags = pkt[hl + 13]
    elif l4_length < 8 or not 8 <= rd16(pkt + hl + 4) <= l4_length:
        v.reason = R_TRUNCATED_L4
        return False
    h.src = rd32raw(pkt + 12)
    h.dst = rd32raw(pkt + 16)
    h.sport = rd16(pkt + hl)
    h.dport = rd16(pkt + hl + 2)
    return True
