# Included by fastpath.pyx, after checksum.pxi. The address and port rewrites: DNAT of a
# request to its backend, and the reverse for a reply (the reference's rewrite_destination
# and rewrite_source), in either family.

cdef inline void rewrite(uint8_t *pkt, Headers *h, const Addr *address, uint16_t port,
                         int destination, bint partial) noexcept nogil:
    """Rewrites the destination (a request's DNAT) or the source (a reply's un-NAT) address
    and port, keeping the IPv4 header checksum and the TCP/UDP checksum (whose
    pseudo-header holds the addresses) or SCTP's CRC32c (which holds the ports) right."""
    cdef uint32_t size = address_size(h.version)
    cdef uint32_t addr_at = source_at(h.version) + (size if destination else 0)
    cdef const uint8_t *new_address = addr_bytes(address, size)
    cdef uint8_t *l4 = pkt + h.hl
    cdef int port_at = 2 if destination else 0
    cdef int sum_at = 16 if h.proto == PROTO_TCP else 6
    cdef uint8_t old_field[18]
    cdef uint8_t new_field[18]
    cdef uint16_t l4_sum
    cdef uint32_t error
    memcpy(old_field, pkt + addr_at, size)
    memcpy(new_field, new_address, size)
    if h.version == 4:
        wr16(pkt + 10, checksum_replace(rd16(pkt + 10), old_field, new_field, 4))
    if h.proto == PROTO_SCTP:
        memcpy(pkt + addr_at, new_address, size)
        if partial:
            # The CRC is left to the NIC (csum_not_inet), but a verdict with a payload
            # makes the packet CHECKSUM_NONE: it must leave with its CRC.
            wr16(l4 + port_at, port)
            wr32le(l4 + 8, sctp_crc(l4, h.total - h.hl))
        elif rd16(l4 + port_at) != port:
            # Off by the same error as before: a corrupt packet stays corrupt.
            error = rd32le(l4 + 8) ^ sctp_crc(l4, h.total - h.hl)
            wr16(l4 + port_at, port)
            wr32le(l4 + 8, sctp_crc(l4, h.total - h.hl) ^ error)
        return
    l4_sum = rd16(l4 + sum_at)
    if partial:
        # CHECKSUM_PARTIAL (a GSO packet, or any packet sent over a veth): the field holds
        # only the pseudo-header sum, for the NIC to complete. But a verdict with a payload
        # makes the kernel mark the packet CHECKSUM_NONE (nfqnl_mangle), so it must leave
        # with its full checksum: rewrite first, then sum the whole segment.
        memcpy(pkt + addr_at, new_address, size)
        wr16(l4 + port_at, port)
        wr16(l4 + sum_at, full_l4_checksum(pkt, h))
        return
    elif h.proto == PROTO_TCP or l4_sum != 0:  # UDP checksum 0 means "none"
        memcpy(old_field + size, l4 + port_at, 2)
        wr16(new_field + size, port)
        l4_sum = checksum_replace(l4_sum, old_field, new_field, size + 2)
        if h.proto == PROTO_UDP and l4_sum == 0:
            l4_sum = 0xFFFF
        wr16(l4 + sum_at, l4_sum)
    memcpy(pkt + addr_at, new_address, size)
    wr16(l4 + port_at, port)
