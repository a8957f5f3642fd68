# Included by fastpath.pyx, after checksum.pxi. The address and port rewrites: DNAT of a
# request to its backend, and the reverse for a reply (the reference's rewrite_destination
# and rewrite_source).

cdef inline void rewrite(uint8_t *pkt, uint32_t hl, uint8_t proto, uint32_t address, uint16_t port,
                         int destination, bint partial) noexcept nogil:
    """Rewrites the destination (a request's DNAT) or the source (a reply's un-NAT) address
    and port, keeping the IP and TCP/UDP checksums right."""
    cdef int addr_at = 16 if destination else 12
    cdef uint8_t *l4 = pkt + hl
    cdef int port_at = 2 if destination else 0
    cdef int sum_at = 16 if proto == PROTO_TCP else 6
    cdef uint8_t old_field[6]
    cdef uint8_t new_field[6]
    cdef uint16_t l4_sum
    memcpy(old_field, pkt + addr_at, 4)
    memcpy(new_field, &address, 4)
    wr16(pkt + 10, checksum_replace(rd16(pkt + 10), old_field, new_field, 4))
    l4_sum = rd16(l4 + sum_at)
    if partial:
        # CHECKSUM_PARTIAL (a GSO packet, or any packet sent over a veth): the field holds
        # only the pseudo-header sum, for the NIC to complete. But a verdict with a payload
        # makes the kernel mark the packet CHECKSUM_NONE (nfqnl_mangle), so it must leave
        # with its full checksum: rewrite first, then sum the whole segment.
        memcpy(pkt + addr_at, &address, 4)
        wr16(l4 + port_at, port)
        wr16(l4 + sum_at, full_l4_checksum(pkt, hl, proto))
        return
    elif proto == PROTO_TCP or l4_sum != 0:  # UDP checksum 0 means "none"
        memcpy(old_field + 4, l4 + port_at, 2)
        wr16(new_field + 4, port)
        l4_sum = checksum_replace(l4_sum, old_field, new_field, 6)
        if proto == PROTO_UDP and l4_sum == 0:
            l4_sum = 0xFFFF
        wr16(l4 + sum_at, l4_sum)
    memcpy(pkt + addr_at, &address, 4)
    wr16(l4 + port_at, port)
