# Included by fastpath.pyx, after flowtable.pxi and services.pxi. ICMP errors about proxied
# flows (the reference's _icmp_error and packet.translate_icmp_error): a backend's
# "unreachable" or "time exceeded" quotes the DNATed request; the quote is translated back
# to the VIP so that the client's stack matches it to its socket.

cdef inline void icmp_patch16(uint8_t *pkt, uint32_t hl, uint32_t at, uint16_t value) noexcept nogil:
    """Writes a 16-bit field inside an ICMP message, keeping the ICMP checksum right."""
    cdef uint8_t old[2]
    cdef uint8_t new[2]
    memcpy(old, pkt + at, 2)
    wr16(new, value)
    wr16(pkt + hl + 2, checksum_replace(rd16(pkt + hl + 2), old, new, 2))
    memcpy(pkt + at, new, 2)


cdef void icmp_error(Core *c, uint8_t *pkt, uint32_t hl, uint32_t total, double now,
                     Verdict *v) noexcept nogil:
    """The verdict for an ICMP packet that parse_ip passed; translates it in place."""
    cdef uint32_t inner = hl + 8, l4, sum_at, index
    cdef uint8_t inner_proto, icmp_type
    cdef uint16_t old_sum, new_sum
    cdef uint8_t old_field[6]
    cdef uint8_t new_field[6]
    cdef Flow *f
    if total - hl < 8:
        v.reason = R_TRUNCATED_L4
        return
    icmp_type = pkt[hl]
    if icmp_type != 3 and icmp_type != 11 and icmp_type != 12:
        v.reason = R_UNSUPPORTED
        return
    if total - inner < 20 or pkt[inner] >> 4 != 4 or (pkt[inner] & 0x0F) < 5:
        v.reason = R_ICMP_BAD_INNER
        return
    l4 = inner + (pkt[inner] & 0x0F) * 4
    inner_proto = pkt[inner + 9]
    if (l4 + 8 > total or rd16(pkt + inner + 6) & 0x1FFF
            or (inner_proto != PROTO_TCP and inner_proto != PROTO_UDP)):
        v.reason = R_ICMP_BAD_INNER
        return
    if in_service_ranges(&c.services, rd32(pkt + 16)):
        v.reason = R_ICMP_UNKNOWN_FLOW
        return
    # The quoted packet is a DNATed request, client to backend: the backend-side index.
    index = flow_live(&c.flows, flow_find(&c.flows, True, inner_proto, rd32raw(pkt + inner + 16),
                                          rd16(pkt + l4 + 2), rd32raw(pkt + inner + 12),
                                          rd16(pkt + l4)), now)
    if index == NIL:
        v.reason = R_ICMP_UNKNOWN_FLOW
        return
    f = &c.flows.entries[index]
    memcpy(old_field, pkt + inner + 16, 4)
    memcpy(old_field + 4, pkt + l4 + 2, 2)
    memcpy(new_field, &f.vip, 4)
    wr16(new_field + 4, f.vport)
    sum_at = l4 + (16 if inner_proto == PROTO_TCP else 6)
    if sum_at + 2 <= total:
        old_sum = rd16(pkt + sum_at)
        if inner_proto == PROTO_TCP or old_sum != 0:
            new_sum = checksum_replace(old_sum, old_field, new_field, 6)
            if inner_proto == PROTO_UDP and new_sum == 0:
                new_sum = 0xFFFF
            icmp_patch16(pkt, hl, sum_at, new_sum)
    icmp_patch16(pkt, hl, inner + 10, checksum_replace(rd16(pkt + inner + 10), old_field, new_field, 4))
    icmp_patch16(pkt, hl, inner + 16, rd16(new_field))
    icmp_patch16(pkt, hl, inner + 18, rd16(new_field + 2))
    icmp_patch16(pkt, hl, l4 + 2, f.vport)
    if rd32raw(pkt + 12) == f.backend_ip:
        memcpy(old_field, pkt + 12, 4)
        wr16(pkt + 10, checksum_replace(rd16(pkt + 10), old_field, new_field, 4))
        memcpy(pkt + 12, &f.vip, 4)
    v.action, v.reason = ACT_ACCEPT, R_ICMP_ERROR
