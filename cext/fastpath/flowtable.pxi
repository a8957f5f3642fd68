# Included by fastpath.pyx, after maps.pxi. The connection table (the reference's
# conntable.py and flows.py): the flow state machine, the FIFO of flows and the two indexes,
# expiry and eviction. Everything but set-up runs without the GIL.

cdef inline int initial_state(uint8_t proto, uint8_t flags) noexcept nogil:
    """flows.initial_state."""
    if proto != PROTO_TCP:
        return S_UDP_UNREPLIED
    if flags & TCP_RST:
        return S_RESET
    if flags & TCP_SYN and not flags & TCP_ACK:
        return S_SYN_SENT
    return S_ESTABLISHED


cdef inline int next_state(int state, int from_client, uint8_t flags) noexcept nogil:
    """flows.next_state."""
    if state == S_BACKEND_GONE:
        return state
    if state == S_UDP_UNREPLIED or state == S_UDP_REPLIED:
        return state if from_client else S_UDP_REPLIED
    if flags & TCP_RST:
        return S_RESET
    if flags & TCP_FIN or state == S_CLOSING:
        return S_CLOSING
    if state == S_SYN_SENT and from_client and flags & TCP_SYN:
        return state
    if state == S_RESET:
        return S_SYN_SENT if flags & TCP_SYN else state
    return S_ESTABLISHED


cdef int flows_init(FlowTable *t, uint32_t capacity, tuple timeouts) except -1:
    """Allocates the table once. timeouts: Timeouts.in_state_order(), indexed by S_*."""
    cdef uint64_t size = 16
    cdef uint32_t i
    cdef int state
    t.capacity = capacity
    t.entries = <Flow *> malloc(capacity * sizeof(Flow))
    while size < (<uint64_t> capacity) * 2:
        size <<= 1
    t.index_mask = size - 1
    t.forward_index = <uint32_t *> malloc(size * sizeof(uint32_t))
    t.reply_index = <uint32_t *> malloc(size * sizeof(uint32_t))
    if t.entries == NULL or t.forward_index == NULL or t.reply_index == NULL:
        raise MemoryError()
    for i in range(<uint32_t> size):
        t.forward_index[i] = NIL
        t.reply_index[i] = NIL
    for i in range(capacity):  # the free list threads through 'newer'
        t.entries[i].newer = i + 1 if i + 1 < capacity else NIL
    t.free_head = 0
    t.count = 0
    t.oldest = t.newest = NIL
    for state in range(S_COUNT):
        t.timeouts[state] = timeouts[state]
    t.full_scan_interval = FULL_SCAN_INTERVAL
    t.last_full_scan = -1e300
    return 0


cdef void flows_free(FlowTable *t) noexcept nogil:
    free(t.entries)
    free(t.wide)
    free(t.forward_index)
    free(t.reply_index)


cdef int flows_widen(FlowTable *t) except -1:
    """Makes room for IPv6 flows' addresses, once: the first IPv6 frontend calls it."""
    if t.wide == NULL:
        # calloc: untouched pages cost no memory until IPv6 flows land in them.
        t.wide = <WideAddrs *> calloc(t.capacity, sizeof(WideAddrs))
        if t.wide == NULL:
            raise MemoryError()
    return 0


cdef inline uint32_t compact(Addr a, uint8_t version) noexcept nogil:
    """What a Flow entry holds of an address: IPv4's 4 bytes, or a fold of IPv6's 16."""
    cdef uint32_t raw
    cdef uint64_t folded
    if version == 4:
        memcpy(&raw, (<const uint8_t *> &a) + 12, 4)
        return raw
    folded = mix64(a.hi) ^ a.lo
    return <uint32_t> (folded ^ (folded >> 32))


cdef inline Addr widen(uint32_t raw) noexcept nogil:
    return addr_read(<const uint8_t *> &raw, 4)


cdef inline uint8_t flow_version(Flow *f) noexcept nogil:
    return 6 if f.bits & FLOW_V6 else 4


cdef inline uint32_t flow_created(Flow *f) noexcept nogil:
    """Its creation time, whole seconds modulo 2^24 (flow_ages unwraps it)."""
    return (<uint32_t> f.created_high) << 16 | f.created_low


cdef inline Addr flow_client(FlowTable *t, uint32_t i) noexcept nogil:
    return t.wide[i].client_ip if t.entries[i].bits & FLOW_V6 else widen(t.entries[i].client_ip)


cdef inline Addr flow_vip(FlowTable *t, uint32_t i) noexcept nogil:
    return t.wide[i].vip if t.entries[i].bits & FLOW_V6 else widen(t.entries[i].vip)


cdef inline Addr flow_backend(FlowTable *t, uint32_t i) noexcept nogil:
    return t.wide[i].backend_ip if t.entries[i].bits & FLOW_V6 else widen(t.entries[i].backend_ip)


cdef inline uint64_t flow_index_hash(uint8_t proto, uint32_t a, uint16_t pa, uint32_t b,
                                     uint16_t pb) noexcept nogil:
    # For the internal indexes only: any good mix will do. Backend choice uses the
    # specified hash instead (hashing.flow_hash).
    return mix64(((<uint64_t> a) << 32 | b) ^ mix64((<uint64_t> pa) << 24 | (<uint64_t> pb) << 8 | proto))


cdef inline uint64_t forward_home(FlowTable *t, Flow *f) noexcept nogil:
    return flow_index_hash(f.proto, f.client_ip, f.client_port, f.vip, f.vport) & t.index_mask


cdef inline uint64_t reply_home(FlowTable *t, Flow *f) noexcept nogil:
    return flow_index_hash(f.proto, f.backend_ip, f.backend_port, f.client_ip, f.client_port) & t.index_mask


cdef uint32_t flow_find(FlowTable *t, bint reply, uint8_t proto, Addr a, uint16_t pa,
                        Addr b, uint16_t pb, uint8_t version) noexcept nogil:
    """The flow of a request (a: client, b: VIP) or of a reply (a: backend, b: client)."""
    cdef uint32_t *index = t.reply_index if reply else t.forward_index
    cdef uint32_t ca = compact(a, version), cb = compact(b, version)
    cdef uint64_t i = flow_index_hash(proto, ca, pa, cb, pb) & t.index_mask
    cdef Flow *f
    cdef WideAddrs *w
    cdef uint8_t family_bit = FLOW_V6 if version == 6 else 0
    while index[i] != NIL:
        f = &t.entries[index[i]]
        if f.proto == proto and (f.bits & FLOW_V6) == family_bit:
            if reply:
                if (f.backend_port == pa and f.client_port == pb and f.backend_ip == ca
                        and f.client_ip == cb):
                    if version == 4:
                        return index[i]
                    w = &t.wide[index[i]]
                    if addr_eq(w.backend_ip, a) and addr_eq(w.client_ip, b):
                        return index[i]
            elif f.client_port == pa and f.vport == pb and f.client_ip == ca and f.vip == cb:
                if version == 4:
                    return index[i]
                w = &t.wide[index[i]]
                if addr_eq(w.client_ip, a) and addr_eq(w.vip, b):
                    return index[i]
        i = (i + 1) & t.index_mask
    return NIL


cdef void unindex(FlowTable *t, bint reply, uint32_t flow_index) noexcept nogil:
    # Linear probing with backward-shift deletion: no tombstones, probes stay short.
    cdef uint32_t *index = t.reply_index if reply else t.forward_index
    cdef Flow *f = &t.entries[flow_index]
    cdef uint64_t i = reply_home(t, f) if reply else forward_home(t, f)
    cdef uint64_t j, home
    while index[i] != flow_index:
        if index[i] == NIL:
            return
        i = (i + 1) & t.index_mask
    j = i
    while True:
        j = (j + 1) & t.index_mask
        if index[j] == NIL:
            break
        f = &t.entries[index[j]]
        home = reply_home(t, f) if reply else forward_home(t, f)
        if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
            continue
        index[i] = index[j]
        i = j
    index[i] = NIL


cdef void insert_index(FlowTable *t, bint reply, uint32_t flow_index) noexcept nogil:
    cdef uint32_t *index = t.reply_index if reply else t.forward_index
    cdef Flow *f = &t.entries[flow_index]
    cdef uint64_t i = reply_home(t, f) if reply else forward_home(t, f)
    while index[i] != NIL:
        i = (i + 1) & t.index_mask
    index[i] = flow_index


cdef void flow_remove(FlowTable *t, uint32_t flow_index) noexcept nogil:
    cdef Flow *f = &t.entries[flow_index]
    unindex(t, False, flow_index)
    unindex(t, True, flow_index)
    if f.older != NIL:
        t.entries[f.older].newer = f.newer
    else:
        t.oldest = f.newer
    if f.newer != NIL:
        t.entries[f.newer].older = f.older
    else:
        t.newest = f.older
    f.newer = t.free_head
    t.free_head = flow_index
    t.count -= 1


cdef uint32_t flows_expire(FlowTable *t, double now) noexcept nogil:
    """Drops every expired flow; returns how many."""
    cdef uint32_t index = t.oldest, next_index, removed = 0
    while index != NIL:
        next_index = t.entries[index].newer
        if t.entries[index].expires <= now:
            flow_remove(t, index)
            removed += 1
        index = next_index
    t.expired += removed
    return removed


cdef uint32_t flow_live(FlowTable *t, uint32_t index, double now) noexcept nogil:
    """index, or NIL if that flow has expired (it is dropped then)."""
    if index != NIL and t.entries[index].expires <= now:
        flow_remove(t, index)
        t.expired += 1
        return NIL
    return index


cdef uint32_t flow_add(FlowTable *t, FlowSpec *new_flow, double now) noexcept nogil:
    """Adds new_flow, replacing any flow it clashes with on either index. An IPv6 flow
    needs t.wide (flows_widen, done with its frontend)."""
    cdef uint32_t index
    cdef uint8_t version = new_flow.version
    cdef uint64_t created
    cdef Flow *f
    # A full table is scanned for expired flows at most once per FULL_SCAN_INTERVAL
    # (as the reference does): a scan for every new flow made a SYN flood cost O(table)
    # per packet, and the queue overflowed.
    if t.count >= t.capacity and now - t.last_full_scan >= t.full_scan_interval:
        flows_expire(t, now)
        t.last_full_scan = now
    while t.count >= t.capacity:
        flow_remove(t, t.oldest)
        t.evicted += 1
    index = flow_find(t, False, new_flow.proto, new_flow.client_ip, new_flow.client_port,
                      new_flow.vip, new_flow.vport, version)
    if index != NIL:
        flow_remove(t, index)
    index = flow_find(t, True, new_flow.proto, new_flow.backend_ip, new_flow.backend_port,
                      new_flow.client_ip, new_flow.client_port, version)
    if index != NIL:
        flow_remove(t, index)
    index = t.free_head
    f = &t.entries[index]
    t.free_head = f.newer
    f.client_ip = compact(new_flow.client_ip, version)
    f.vip = compact(new_flow.vip, version)
    f.backend_ip = compact(new_flow.backend_ip, version)
    f.client_port, f.vport, f.backend_port = new_flow.client_port, new_flow.vport, new_flow.backend_port
    f.proto, f.state = new_flow.proto, new_flow.state
    f.bits = (FLOW_MASQUERADE if new_flow.masquerade else 0) | (FLOW_V6 if version == 6 else 0)
    created = 0
    if now > 0:
        created = (<uint64_t> now) & <uint64_t> CREATED_MASK
    f.created_high, f.created_low = created >> 16, created & 0xFFFF
    if version == 6:
        t.wide[index].client_ip = new_flow.client_ip
        t.wide[index].vip = new_flow.vip
        t.wide[index].backend_ip = new_flow.backend_ip
    f.expires = now + t.timeouts[new_flow.state]
    f.older = t.newest
    f.newer = NIL
    if t.newest != NIL:
        t.entries[t.newest].newer = index
    else:
        t.oldest = index
    t.newest = index
    t.count += 1
    insert_index(t, False, index)
    insert_index(t, True, index)
    return index


cdef inline void flow_observe(FlowTable *t, uint32_t index, int from_client, uint8_t flags,
                              double now) noexcept nogil:
    """One more packet of the flow: its next state, and its timeout from now."""
    cdef Flow *f = &t.entries[index]
    f.state = next_state(f.state, from_client, flags)
    f.expires = now + t.timeouts[f.state]
