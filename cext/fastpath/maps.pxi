# Included by fastpath.pyx. The hashing and keys of the fast path's own tables, and U64Map:
# a small open-addressing map uint64 -> uint32, rebuilt whole when the frontends change.

cdef inline uint64_t index_hash(uint8_t proto, uint32_t a, uint16_t pa, uint32_t b,
                                uint16_t pb) noexcept nogil:
    # For the internal indexes only (flows, affinities): any good mix will do. Backend
    # choice uses the specified hash instead (hashing.flow_hash).
    return mix64(((<uint64_t> a) << 32 | b) ^ mix64((<uint64_t> pa) << 24 | (<uint64_t> pb) << 8 | proto))


cdef inline uint64_t frontend_key(uint32_t vip, uint8_t proto, uint16_t port) noexcept nogil:
    return (<uint64_t> vip) << 24 | (<uint64_t> proto) << 16 | port


cdef inline uint64_t backend_key(uint8_t proto, uint32_t ip, uint16_t port) noexcept nogil:
    return (<uint64_t> proto) << 48 | (<uint64_t> ip) << 16 | port


cdef int map_init(U64Map *m, uint64_t entries) except -1:
    """Empties the map, sized for entries at load factor <= 0.5."""
    cdef uint64_t size = 16
    cdef uint64_t i
    while size < entries * 2:
        size <<= 1
    free(m.keys)
    free(m.values)
    m.keys = <uint64_t *> malloc(size * sizeof(uint64_t))
    m.values = <uint32_t *> malloc(size * sizeof(uint32_t))
    if m.keys == NULL or m.values == NULL:
        raise MemoryError()
    for i in range(size):
        m.keys[i] = EMPTY_KEY
    m.mask = size - 1
    return 0


cdef void map_free(U64Map *m) noexcept nogil:
    free(m.keys)
    free(m.values)
    m.keys = NULL
    m.values = NULL


cdef inline uint32_t *map_slot(U64Map *m, uint64_t key, bint insert) noexcept nogil:
    """The value's slot for key; a new one if insert, else NULL when key is absent."""
    cdef uint64_t i = mix64(key) & m.mask
    while m.keys[i] != EMPTY_KEY:
        if m.keys[i] == key:
            return &m.values[i]
        i = (i + 1) & m.mask
    if insert:
        m.keys[i] = key
        return &m.values[i]
    return NULL
