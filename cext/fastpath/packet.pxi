# Included by fastpath.pyx. Packet fields and addresses, and the header checks of the
# reference's parser (nfqproxy.datapath.reference.packet and ipv6) in its order, so that a
# malformed packet gets the same reason on both paths.

cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    """A big-endian 32-bit field in host order."""
    return (<uint32_t> p[0] << 24) | (<uint32_t> p[1] << 16) | (<uint32_t> p[2] << 8) | p[3]


# --- addresses: 16 bytes, IPv4 mapped (::ffff:a.b.c.d) -----------------------------------

cdef inline Addr addr_read(const uint8_t *p, uint32_t size) noexcept nogil:
    """The address of size (4 or 16) bytes at p, as the tables hold it."""
    cdef Addr a
    cdef uint8_t *b = <uint8_t *> &a
    if size == 16:
        memcpy(b, p, 16)
    else:
        memset(b, 0, 10)
        b[10] = 0xFF
        b[11] = 0xFF
        memcpy(b + 12, p, 4)
    return a


cdef inline const uint8_t *addr_bytes(const Addr *a, uint32_t size) noexcept nogil:
    """The address's bytes as a packet of its family holds them (size 4 or 16)."""
    return (<const uint8_t *> a) + (16 - size)


cdef inline bint addr_eq(Addr a, Addr b) noexcept nogil:
    return a.hi == b.hi and a.lo == b.lo


cdef inline bint is_v4_mapped(const uint8_t *p) noexcept nogil:
    """Whether 16 address bytes are in ::ffff:0:0/96 (reference ipv6.V4_MAPPED)."""
    cdef int i
    for i in range(10):
        if p[i]:
            return False
    return p[10] == 0xFF and p[11] == 0xFF


cdef inline uint32_t address_size(uint8_t version) noexcept nogil:
    return 4 if version == 4 else 16


cdef inline uint32_t source_at(uint8_t version) noexcept nogil:
    """Offset of the source address in the IP header; the destination follows it."""
    return 12 if version == 4 else 8


# --- IPv4 and IPv6 headers --------------------------------------------------------------

cdef inline bint parse_ip(const uint8_t *pkt, uint32_t length, Headers *h,
                          Verdict *v) noexcept nogil:
    """Checks the IP header (IPv6: and walks its extension headers); False with v.reason
    set if the packet fails a check. Sets v.length to the IP total length: what follows
    it (link padding) is not handed back."""
    cdef uint32_t hl, total
    cdef int reason
    if length < 20:
        v.reason = R_TRUNCATED_IP
        return False
    if pkt[0] >> 4 == 6:
        reason = walk_ipv6(pkt, 0, length, False, h)
        if reason >= 0:
            v.reason = reason
            return False
        v.length = h.total
        return True
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
    h.version, h.hl, h.total, h.proto = 4, hl, total, pkt[9]
    h.extensions, h.first_fragment, h.later_fragment = 0, False, False
    return True


cdef inline bint is_extension_header(uint8_t proto) noexcept nogil:
    return (proto == EXT_HOP_BY_HOP or proto == EXT_ROUTING or proto == EXT_FRAGMENT
            or proto == EXT_AUTHENTICATION or proto == EXT_DESTINATION_OPTIONS)


cdef int walk_ipv6(const uint8_t *pkt, uint32_t at, uint32_t available, bint quoted,
                   Headers *h) noexcept nogil:
    """reference/ipv6.walk: the IPv6 header at pkt + at and its extension headers, up to
    the upper-layer one. Fills h's version, proto, hl (the upper-layer offset), total,
    extensions and fragment flags; returns -1, or the R_* reason it cannot be read.
    quoted: an ICMPv6 error's quote, cut short: its payload length may overshoot, and
    the quote is walked as far as available goes."""
    cdef uint32_t total, offset, length, count = 0, fragment_offset
    cdef uint8_t proto
    cdef bint first = False, later = False
    if available < at or available - at < 40:
        return R_TRUNCATED_IP
    if is_v4_mapped(pkt + at + 8) or is_v4_mapped(pkt + at + 24):
        # Never on the wire (RFC 4291 2.5.5.2), and the tables hold IPv4 addresses so.
        return R_NOT_IPV4
    total = at + 40 + rd16(pkt + at + 4)
    if not quoted:
        if rd16(pkt + at + 4) == 0 or total > available:
            return R_BAD_LENGTH  # a jumbogram (RFC 2675), or a lie: not served
    elif total > available:
        total = available
    proto, offset = pkt[at + 6], at + 40
    while is_extension_header(proto):
        count += 1
        if count > MAX_EXTENSION_HEADERS or offset + 8 > total:
            return R_BAD_EXTENSION_HEADERS
        if proto == EXT_FRAGMENT:
            fragment_offset = rd16(pkt + offset + 2) >> 3
            later = later or fragment_offset != 0
            first = first or (fragment_offset == 0 and (pkt[offset + 3] & 1))
            length = 8
        elif proto == EXT_AUTHENTICATION:
            length = (pkt[offset + 1] + 2) * 4
        else:
            length = (pkt[offset + 1] + 1) * 8
        proto, offset = pkt[offset], offset + length
        if offset > total:
            return R_BAD_EXTENSION_HEADERS
        if later:
            break  # what follows is the middle of a datagram, not a header
    h.version, h.proto, h.hl, h.total = 6, proto, offset, total
    h.extensions, h.first_fragment, h.later_fragment = count, first, later
    return -1


cdef inline bint parse_ports(const uint8_t *pkt, Headers *h, Verdict *v) noexcept nogil:
    """For TCP, UDP or SCTP after parse_ip (reference packet._l4): checks the upper-layer
    header fits, then reads the addresses, ports and TCP flags; False with v.reason set if
    it does not. A first IPv6 fragment holds only part of what UDP's length counts."""
    cdef uint32_t hl = h.hl, size = address_size(h.version), at = source_at(h.version)
    cdef uint32_t l4_length = h.total - hl
    cdef uint16_t ulen
    h.flags = 0
    if h.proto == PROTO_SCTP:
        if h.first_fragment:
            v.reason = R_FRAGMENT  # its CRC32c covers the whole datagram
            return False
        if l4_length < 12:
            v.reason = R_TRUNCATED_L4
            return False
    elif h.proto == PROTO_UDP:
        if l4_length < 8:
            v.reason = R_TRUNCATED_L4
            return False
        ulen = rd16(pkt + hl + 4)
        if ulen < 8 or (ulen > l4_length and not h.first_fragment):
            v.reason = R_TRUNCATED_L4
            return False
    else:
        if l4_length < 20 or (pkt[hl + 12] >> 4) * 4 < 20 or (pkt[hl + 12] >> 4) * 4 > l4_length:
            v.reason = R_TRUNCATED_L4
            return False
        h.flags = pkt[hl + 13]
    h.src = addr_read(pkt + at, size)
    h.dst = addr_read(pkt + at + size, size)
    h.sport = rd16(pkt + hl)
    h.dport = rd16(pkt + hl + 2)
    return True
