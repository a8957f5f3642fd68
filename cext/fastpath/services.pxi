# Included by fastpath.pyx, after flowtable.pxi. The service table: the service CIDRs, the
# frontends (a service port's backends and Maglev table) and the maps that find them.
# Programming it is the slow path, with the GIL; the lookups run without.

cdef int services_init(ServiceTable *s, list ranges) except -1:
    """ranges: [(network, mask)] of the service CIDRs, 16 packed bytes each (IPv4 ones
    mapped: ::ffff:network, and a mask of 96 + prefix bits)."""
    cdef int i
    if len(ranges) > MAX_RANGES:
        raise ValueError(f"at most {MAX_RANGES} service ranges")
    for i, (network, mask) in enumerate(ranges):
        if len(network) != 16 or len(mask) != 16:
            raise ValueError("a service range is 16 bytes of network and of mask")
        s.range_net[i] = addr_read(<const uint8_t *> <const char *> network, 16)
        s.range_mask[i] = addr_read(<const uint8_t *> <const char *> mask, 16)
    s.range_count = len(ranges)
    s.slots = 0
    s.frontends = NULL
    map_init(&s.frontend_map, 1)
    map_init(&s.vip_map, 1)
    map_init(&s.backend_map, 1)
    return 0


cdef void frontend_free(ServiceTable *s, uint32_t slot) noexcept nogil:
    cdef Frontend *f = &s.frontends[slot]
    if f.used:
        free(f.backend_ips)
        free(f.backend_ports)
        free(f.backend_marks)
        free(f.decided)
        free(f.table)
        # Empty, not dangling: a map may still name this slot until the maps are rebuilt.
        f.backend_ips, f.backend_ports, f.backend_marks, f.table = NULL, NULL, NULL, NULL
        f.decided = NULL
        f.backend_count = f.present_count = f.table_size = 0
        memset(f.refused, 0, sizeof(f.refused))
        f.used = 0


cdef void services_free(ServiceTable *s) noexcept nogil:
    cdef uint32_t i
    for i in range(s.slots):
        frontend_free(s, i)
    free(s.frontends)
    map_free(&s.frontend_map)
    map_free(&s.vip_map)
    map_free(&s.backend_map)


cdef Frontend *frontend_install(ServiceTable *s, uint32_t slot, bytes vip, uint16_t proto,
                                uint16_t port, list backends, list present,
                                const uint16_t[:] slots, list marks) except NULL:
    """Fills a slot (the table grows as needed) for a packed VIP with backends [(packed
    ip, port)] of its family, the draining ones after them in present, their marks (the
    offload path's; None: zeros) and the Maglev table slots."""
    cdef uint32_t i, total = len(present), size = slots.shape[0]
    cdef Frontend *grown
    cdef Frontend *f
    cdef bytes packed
    if len(vip) != 4 and len(vip) != 16:
        raise ValueError(f"a VIP of {len(vip)} bytes")
    for packed, _ in [(vip, 0), *present]:
        if len(packed) != len(vip):
            raise ValueError("a backend of another family than its VIP")
        if len(packed) == 16 and is_v4_mapped(<const uint8_t *> <const char *> packed):
            # The tables hold IPv4 addresses so (the model refuses such an address).
            raise ValueError("an IPv4-mapped IPv6 address")
    if slot >= s.slots:
        grown = <Frontend *> calloc(slot * 2 + 16, sizeof(Frontend))
        if grown == NULL:
            raise MemoryError()
        if s.frontends != NULL:
            memcpy(grown, s.frontends, s.slots * sizeof(Frontend))
            free(s.frontends)
        s.frontends = grown
        s.slots = slot * 2 + 16
    frontend_free(s, slot)
    f = &s.frontends[slot]
    f.backend_ips = <Addr *> malloc((total or 1) * sizeof(Addr))
    f.backend_ports = <uint16_t *> malloc((total or 1) * sizeof(uint16_t))
    f.backend_marks = <uint32_t *> calloc(total or 1, sizeof(uint32_t))
    f.decided = <uint64_t *> calloc(total or 1, sizeof(uint64_t))
    f.table = <uint16_t *> malloc((size or 1) * sizeof(uint16_t))
    f.used = 1  # from here on frontend_free releases what was allocated
    if (f.backend_ips == NULL or f.backend_ports == NULL or f.backend_marks == NULL
            or f.decided == NULL or f.table == NULL):
        frontend_free(s, slot)
        raise MemoryError()
    if marks is not None and len(marks) != total:
        frontend_free(s, slot)
        raise ValueError(f"{len(marks)} backend marks for {total} backends")
    for i in range(total):
        packed, backend_port = present[i]
        f.backend_ips[i] = addr_read(<const uint8_t *> <const char *> packed, len(packed))
        f.backend_ports[i] = backend_port
        if marks is not None:
            f.backend_marks[i] = marks[i]
    for i in range(size):
        f.table[i] = slots[i]
    f.vip = addr_read(<const uint8_t *> <const char *> vip, len(vip))
    f.proto, f.port = proto, port
    f.backend_count, f.present_count, f.table_size = len(backends), total, size
    return f


cdef inline bint same_service_port(Frontend *a, Frontend *b) noexcept nogil:
    """One frontend, or a frontend and its cluster variant: a reply to either is the same."""
    return (addr_eq(a.vip, b.vip) and a.port == b.port
            and (a.proto & ~VARIANT_CLUSTER) == (b.proto & ~VARIANT_CLUSTER))


cdef int services_rebuild_maps(ServiceTable *s) except -1:
    """Rebuilds the frontend, VIP and backend maps from the frontends in use."""
    cdef uint32_t i, j, used = 0, backends = 0
    cdef uint32_t *value
    cdef uint32_t key
    cdef Frontend *f
    for i in range(s.slots):
        if s.frontends[i].used:
            used += 1
            backends += s.frontends[i].backend_count
    map_init(&s.frontend_map, used)
    map_init(&s.vip_map, used)
    map_init(&s.backend_map, backends)
    for i in range(s.slots):
        f = &s.frontends[i]
        if not f.used:
            continue
        map_slot(&s.frontend_map, f.vip, port_key(f.proto, f.port), True)[0] = i
        map_slot(&s.vip_map, f.vip, 0, True)[0] = 1
        for j in range(f.backend_count):
            key = port_key(f.proto & ~VARIANT_CLUSTER, f.backend_ports[j])
            value = map_slot(&s.backend_map, f.backend_ips[j], key, False)
            if value == NULL:
                map_slot(&s.backend_map, f.backend_ips[j], key, True)[0] = i
            elif value[0] != AMBIGUOUS and not same_service_port(&s.frontends[value[0]], f):
                value[0] = AMBIGUOUS
    return 0


cdef inline bint in_service_ranges(ServiceTable *s, Addr address) noexcept nogil:
    """Whether an address is in a service CIDR: a packet to it is a request. (An IPv6
    packet never holds a mapped address: the parser refuses it.)"""
    cdef int i
    for i in range(s.range_count):
        if ((address.hi & s.range_mask[i].hi) == s.range_net[i].hi
                and (address.lo & s.range_mask[i].lo) == s.range_net[i].lo):
            return True
    return False


cdef inline Frontend *frontend_find(ServiceTable *s, Addr vip, uint16_t proto,
                                    uint16_t port) noexcept nogil:
    cdef uint32_t *slot = map_slot(&s.frontend_map, vip, port_key(proto, port), False)
    return &s.frontends[slot[0]] if slot != NULL else NULL


cdef inline Frontend *frontend_of_backend(ServiceTable *s, uint8_t proto, Addr ip,
                                          uint16_t port) noexcept nogil:
    """The one frontend a backend serves, to rebuild a reply's flow; NULL if none or many."""
    cdef uint32_t *slot = map_slot(&s.backend_map, ip, port_key(proto, port), False)
    if slot == NULL or slot[0] == AMBIGUOUS:
        return NULL
    return &s.frontends[slot[0]]


cdef void retire_flows_to_removed_backends(Core *c, double now) noexcept nogil:
    """As the reference: UDP flows whose backend is no longer chosen are dropped (the next
    datagram picks anew); TCP flows whose backend left the service altogether are marked,
    so that the client's next packet gets a reset."""
    cdef FlowTable *t = &c.flows
    cdef uint32_t index = t.oldest, next_index
    cdef Flow *flow
    cdef Frontend *f
    cdef Addr vip, backend
    cdef uint32_t j, limit
    cdef int variant
    cdef bint alive
    while index != NIL:
        flow = &t.entries[index]
        next_index = flow.newer
        if flow.proto == PROTO_TCP and flow.state == S_BACKEND_GONE:
            index = next_index
            continue
        alive = False
        vip, backend = flow_vip(t, index), flow_backend(t, index)
        for variant in range(2):  # the frontend, then its cluster variant if it has one
            f = frontend_find(&c.services, vip, flow.proto | (VARIANT_CLUSTER if variant else 0), flow.vport)
            if f == NULL or alive:
                continue
            limit = f.present_count if flow.proto == PROTO_TCP else f.backend_count
            for j in range(limit):
                if f.backend_ports[j] == flow.backend_port and addr_eq(f.backend_ips[j], backend):
                    alive = True
                    break
        if not alive:
            if flow.proto == PROTO_TCP:
                flow.state = S_BACKEND_GONE
                flow.expires = now + t.timeouts[S_BACKEND_GONE]
                c.events[E_TCP_FLOW_RETIRED] += 1
            else:
                flow_remove(t, index)
                c.events[E_UDP_FLOW_RESTEERED] += 1
        index = next_index
