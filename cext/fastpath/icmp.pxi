# Included by fastpath.pyx, after flowtable.pxi and services.pxi. ICMP and ICMPv6 errors
# about proxied flows (the reference's _icmp_error, and reference/icmp.py): a backend's
# "unreachable", "packet too big" or "time exceeded" quotes the DNATed request; the quote
# is translated back to the VIP so that the client's stack matches it to its socket.

cdef inline void icmp_patch(uint8_t *pkt, uint32_t hl, uint32_t at, const uint8_t *new,
                            int n) noexcept nogil:
    """Writes n bytes inside an ICMP message, keeping the ICMP checksum right."""
    wr16(pkt + hl + 2, checksum_replace(rd16(pkt + hl + 2), pkt + at, new, n))
    memcpy(pkt + at, new, n)


cdef inline void icmp_patch16(uint8_t *pkt, uint32_t hl, uint32_t at, uint16_t value) noexcept nogil:
    cdef uint8_t new[2]
    wr16(new, value)
    icmp_patch(pkt, hl, at, new, 2)


cdef inline bint is_quoted_protocol(uint8_t proto) noexcept nogil:
    return proto == PROTO_TCP or proto == PROTO_UDP or proto == PROTO_SCTP


cdef inline uint32_t quoted_l4(const uint8_t *pkt, Headers *outer, uint8_t *inner_proto,
                               Verdict *v) noexcept nogil:
    """reference icmp.parse_icmp_error / parse_icmp6_error: the offset of the quoted
    upper-layer header, its protocol in inner_proto; 0 with v.reason set if the error is
    none this proxy translates."""
    cdef uint32_t hl = outer.hl, total = outer.total, inner = hl + 8, l4
    cdef uint8_t icmp_type
    cdef Headers quoted
    if total - hl < 8:
        v.reason = R_TRUNCATED_L4
        return 0
    icmp_type = pkt[hl]
    if outer.version == 4:
        if icmp_type != 3 and icmp_type != 11 and icmp_type != 12:
            v.reason = R_UNSUPPORTED  # echo and the rest: not about a proxied flow
            return 0
        if total - inner < 20 or pkt[inner] >> 4 != 4 or (pkt[inner] & 0x0F) < 5:
            v.reason = R_ICMP_BAD_INNER
            return 0
        l4 = inner + (pkt[inner] & 0x0F) * 4
        inner_proto[0] = pkt[inner + 9]
        if l4 + 8 > total or rd16(pkt + inner + 6) & 0x1FFF or not is_quoted_protocol(inner_proto[0]):
            v.reason = R_ICMP_BAD_INNER
            return 0
        return l4
    if icmp_type < 1 or icmp_type > 4:
        v.reason = R_UNSUPPORTED  # echo, neighbour discovery: not ours
        return 0
    if (total - inner < 40 or pkt[inner] >> 4 != 6
            or walk_ipv6(pkt, inner, total, True, &quoted) >= 0 or quoted.later_fragment
            or not is_quoted_protocol(quoted.proto) or quoted.hl + 8 > total):
        v.reason = R_ICMP_BAD_INNER
        return 0
    inner_proto[0] = quoted.proto
    return quoted.hl


cdef void icmp_error(Core *c, uint8_t *pkt, Headers *outer, double now,
                     Verdict *v) noexcept nogil:
    """The verdict for an ICMP or ICMPv6 packet that parse_ip passed; translates it in
    place. ICMPv6's checksum covers the outer addresses too (its pseudo-header), ICMP's
    does not."""
    cdef uint32_t hl = outer.hl, total = outer.total, inner = hl + 8, l4, sum_at, index
    cdef uint32_t size = address_size(outer.version)
    cdef uint32_t inner_src_at = inner + source_at(outer.version)
    cdef uint32_t inner_dst_at = inner_src_at + size
    cdef uint32_t outer_src_at = source_at(outer.version)
    cdef uint8_t inner_proto = 0
    cdef uint16_t old_sum, new_sum
    cdef uint8_t old_field[18]
    cdef uint8_t new_field[18]
    cdef Addr vip_addr, backend
    cdef const uint8_t *vip
    cdef Flow *f
    l4 = quoted_l4(pkt, outer, &inner_proto, v)
    if l4 == 0:
        return
    if in_service_ranges(&c.services, addr_read(pkt + outer_src_at + size, size)):
        v.reason = R_ICMP_UNKNOWN_FLOW
        return
    # The quoted packet is a DNATed request, client to backend: the backend-side index.
    index = flow_live(&c.flows, flow_find(&c.flows, True, inner_proto,
                                          addr_read(pkt + inner_dst_at, size), rd16(pkt + l4 + 2),
                                          addr_read(pkt + inner_src_at, size), rd16(pkt + l4),
                                          outer.version), now)
    if index == NIL:
        v.reason = R_ICMP_UNKNOWN_FLOW
        return
    f = &c.flows.entries[index]
    vip_addr, backend = flow_vip(&c.flows, index), flow_backend(&c.flows, index)
    vip = addr_bytes(&vip_addr, size)
    memcpy(old_field, pkt + inner_dst_at, size)
    memcpy(old_field + size, pkt + l4 + 2, 2)
    memcpy(new_field, vip, size)
    wr16(new_field + size, f.vport)
    sum_at = l4 + (16 if inner_proto == PROTO_TCP else 6)
    # SCTP's quoted CRC32c is left stale: receivers match by addresses, ports and tag.
    if inner_proto != PROTO_SCTP and sum_at + 2 <= total:  # TCP's may lie past the quote
        old_sum = rd16(pkt + sum_at)
        if inner_proto == PROTO_TCP or old_sum != 0:
            new_sum = checksum_replace(old_sum, old_field, new_field, size + 2)
            if inner_proto == PROTO_UDP and new_sum == 0:
                new_sum = 0xFFFF
            icmp_patch16(pkt, hl, sum_at, new_sum)
    if outer.version == 4:
        icmp_patch16(pkt, hl, inner + 10, checksum_replace(rd16(pkt + inner + 10), old_field, new_field, 4))
    icmp_patch(pkt, hl, inner_dst_at, vip, size)
    icmp_patch16(pkt, hl, l4 + 2, f.vport)
    if memcmp(pkt + outer_src_at, addr_bytes(&backend, size), size) == 0:
        # An error the backend sent itself comes from the VIP instead.
        if outer.version == 4:
            wr16(pkt + 10, checksum_replace(rd16(pkt + 10), pkt + outer_src_at, vip, 4))
        else:
            wr16(pkt + hl + 2, checksum_replace(rd16(pkt + hl + 2), pkt + outer_src_at, vip, 16))
        memcpy(pkt + outer_src_at, vip, size)
    v.action, v.reason = ACT_ACCEPT, R_ICMP_ERROR
