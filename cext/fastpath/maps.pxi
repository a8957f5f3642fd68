# Included by fastpath.pyx. The hashing and keys of the fast path's own tables, and AddrMap:
# a small open-addressing map (address, extra) -> uint32, rebuilt whole when the frontends
# change.

cdef inline uint64_t addr_mix(Addr a) noexcept nogil:
    return mix64(a.hi ^ mix64(a.lo))


cdef inline uint64_t index_hash(uint8_t proto, Addr a, uint16_t pa, Addr b,
                                uint16_t pb) noexcept nogil:
    # For the internal indexes only (flows, affinities): any good mix will do. Backend
    # choice uses the specified hash instead (hashing.flow_hash).
    return mix64(addr_mix(a) ^ (addr_mix(b) * 0x9E3779B97F4A7C15ULL)
                 ^ ((<uint64_t> pa) << 24 | (<uint64_t> pb) << 8 | proto))


cdef inline uint32_t port_key(uint16_t proto, uint16_t port) noexcept nogil:
    """A frontend's or a backend's (protocol, port) as a map key's extra."""
    return (<uint32_t> proto) << 16 | port


cdef int map_init(AddrMap *m, uint64_t entries) except -1:
    """Empties the map, sized for entries at load factor <= 0.5."""
    cdef uint64_t size = 16
    while size < entries * 2:
        size <<= 1
    free(m.keys)
    free(m.values)
    m.keys = <MapKey *> calloc(size, sizeof(MapKey))  # used = 0: every slot empty
    m.values = <uint32_t *> malloc(size * sizeof(uint32_t))
    if m.keys == NULL or m.values == NULL:
        raise MemoryError()
    m.mask = size - 1
    return 0


cdef void map_free(AddrMap *m) noexcept nogil:
    free(m.keys)
    free(m.values)
    m.keys = NULL
    m.values = NULL


cdef inline uint32_t *map_slot(AddrMap *m, Addr address, uint32_t extra,
                               bint insert) noexcept nogil:
    """The value's slot for the key; a new one if insert, else NULL when it is absent."""
    cdef uint64_t i = mix64(addr_mix(address) ^ extra) & m.mask
    cdef MapKey *k
    while m.keys[i].used:
        k = &m.keys[i]
        if k.extra == extra and addr_eq(k.address, address):
            return &m.values[i]
        i = (i + 1) & m.mask
    if insert:
        m.keys[i].address, m.keys[i].extra, m.keys[i].used = address, extra, 1
        return &m.values[i]
    return NULL
