# Included by fastpath.pyx, after services.pxi. The choice of a new flow's backend: the
# client's sticky one under sessionAffinity ClientIP (the reference's AffinityTable), else
# the Maglev table's slot for the flow's hash.

cdef int affinity_reserve(AffinityTable *a) except -1:
    """Allocates the table for a.limit clients, once: the first frontend with affinity."""
    cdef uint64_t size = 16
    if a.entries != NULL:
        return 0
    while size < (<uint64_t> a.limit) * 2:
        size <<= 1
    # calloc: untouched pages cost no memory until clients are remembered.
    a.entries = <Affinity *> calloc(size, sizeof(Affinity))
    if a.entries == NULL:
        raise MemoryError()
    a.mask = size - 1
    return 0


cdef inline uint64_t affinity_home(AffinityTable *a, Affinity *e) noexcept nogil:
    return index_hash(e.proto, e.client_ip, 0, e.vip, e.vport) & a.mask


cdef Affinity *affinity_find(AffinityTable *a, uint8_t proto, Addr client, Addr vip,
                             uint16_t vport) noexcept nogil:
    cdef uint64_t i = index_hash(proto, client, 0, vip, vport) & a.mask
    cdef Affinity *e
    while a.entries[i].used:
        e = &a.entries[i]
        if (e.vport == vport and e.proto == proto and addr_eq(e.client_ip, client)
                and addr_eq(e.vip, vip)):
            return e
        i = (i + 1) & a.mask
    return NULL


cdef void affinity_remove(AffinityTable *a, uint64_t i) noexcept nogil:
    # Backward shift: pull later entries of the probe run into the hole.
    cdef uint64_t j = i, home
    a.entries[i].used = 0
    a.count -= 1
    while True:
        j = (j + 1) & a.mask
        if not a.entries[j].used:
            return
        home = affinity_home(a, &a.entries[j])
        if ((j - home) & a.mask) >= ((j - i) & a.mask):
            a.entries[i] = a.entries[j]
            a.entries[j].used = 0
            i = j


cdef uint32_t affinity_expire(AffinityTable *a, double now) noexcept nogil:
    """Forgets the clients whose affinity has expired; returns how many."""
    cdef uint64_t i = 0
    cdef uint32_t removed = 0
    if a.entries == NULL or a.count == 0:
        return 0
    while i <= a.mask:
        if a.entries[i].used and a.entries[i].expires <= now:
            affinity_remove(a, i)  # an entry may have moved into i: look again
            removed += 1
        else:
            i += 1
    return removed


cdef uint32_t choose_backend(Core *c, Frontend *f, FlowSpec *flow, double now) noexcept nogil:
    """The backend for a new flow: the client's sticky one, else Maglev's. Fills the flow's
    backend and returns its index in the frontend's backends."""
    cdef AffinityTable *a = &c.affinity
    cdef Affinity *sticky = NULL
    cdef uint64_t i
    cdef uint32_t j, value, size
    if f.affinity_timeout > 0:
        sticky = affinity_find(a, flow.proto, flow.client_ip, flow.vip, flow.vport)
        if sticky != NULL and sticky.expires <= now:
            affinity_remove(a, sticky - a.entries)
            sticky = NULL
        if sticky != NULL:
            for j in range(f.backend_count):
                if (f.backend_ports[j] == sticky.backend_port
                        and addr_eq(f.backend_ips[j], sticky.backend_ip)):
                    sticky.expires = now + f.affinity_timeout
                    flow.backend_ip, flow.backend_port = sticky.backend_ip, sticky.backend_port
                    c.events[E_AFFINITY_HIT] += 1
                    return j
    size = address_size(flow.version)
    value = f.table[hashing.flow_hash(flow.proto, addr_bytes(&flow.client_ip, size),
                                      flow.client_port, addr_bytes(&flow.vip, size), flow.vport,
                                      size, c.flow_seed) % f.table_size]
    flow.backend_ip, flow.backend_port = f.backend_ips[value], f.backend_ports[value]
    if f.affinity_timeout <= 0:
        return value
    if sticky == NULL:
        if a.count >= a.limit:
            c.events[E_AFFINITY_TABLE_FULL] += 1
            return value
        i = index_hash(flow.proto, flow.client_ip, 0, flow.vip, flow.vport) & a.mask
        while a.entries[i].used:
            i = (i + 1) & a.mask
        sticky = &a.entries[i]
        sticky.client_ip, sticky.vip, sticky.vport = flow.client_ip, flow.vip, flow.vport
        sticky.proto, sticky.used = flow.proto, 1
        a.count += 1
    # New, or its backend left the service: the client moves on.
    sticky.backend_ip, sticky.backend_port = flow.backend_ip, flow.backend_port
    sticky.expires = now + f.affinity_timeout
    return value


cdef bint affinity_remember(AffinityTable *a, uint8_t proto, Addr client, Addr vip,
                            uint16_t vport, Addr backend_ip, uint16_t backend_port,
                            double expires) noexcept nogil:
    """Records a client's backend (after a restart, from conntrack); False when full."""
    cdef Affinity *e = affinity_find(a, proto, client, vip, vport)
    cdef uint64_t i
    if e == NULL:
        if a.count >= a.limit:
            return False
        i = index_hash(proto, client, 0, vip, vport) & a.mask
        while a.entries[i].used:
            i = (i + 1) & a.mask
        e = &a.entries[i]
        e.client_ip, e.vip, e.vport, e.proto, e.used = client, vip, vport, proto, 1
        a.count += 1
    e.backend_ip, e.backend_port, e.expires = backend_ip, backend_port, expires
    return True
