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
    free(t.forward_index)
    free(t.reply_index)


cdef inline uint64_t forward_home(FlowTable *t, Flow *f) noexcept nogil:
    return index_hash(f.proto, f.client_ip, f.client_port, f.vip, f.vport) & t.index_mask


cdef inline uint64_t reply_home(FlowTable *t, Flow *f) noexcept nogil:
    return index_hash(f.proto, f.backend_ip, f.backend_port, f.client_ip, f.client_port) & t.index_mask


cdef uint32_t flow_find(FlowTable *t, bint reply, uint8_t proto, uint32_t a, uint16_t pa,
                        uint32_t b, uint16_t pb) noexcept nogil:
    """The flow of a request (a: client, b: VIP) or of a reply (a: backend, b: client)."""
    cdef uint32_t *index = t.reply_index if reply else t.forward_index
    cdef uint64_t i = index_hash(proto, a, pa, b, pb) & t.index_mask
    cdef Flow *f
    while index[i] != NIL:
        f = &t.entries[index[i]]
        if f.proto == proto:
            if reply:
                if f.backend_ip == a and f.backend_port == pa and f.client_ip == b and f.client_port == pb:
                    return index[i]
            elif f.client_ip == a and f.client_port == pa and f.vip == b and f.vport == pb:
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


cdef uint32_t flow_add(FlowTable *t, Flow *new_flow, double now) noexcept nogil:
    """Adds a copy of new_flow, replacing any flow it clashes with on either index."""
    cdef uint32_t index
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
                      new_flow.vip, new_flow.vport)
    if index != NIL:
        flow_remove(t, index)
    index = flow_find(t, True, new_flow.proto, new_flow.backend_ip, new_flow.backend_port,
                      new_flow.client_ip, new_flow.client_port)
    if index != NIL:
        flow_remove(t, index)
    index = t.free_head
    t.free_head = t.entries[index].newer
    t.entries[index] = new_flow[0]
    t.entries[index].expires = now + t.timeouts[new_flow.state]
    t.entries[index].older = t.newest
    t.entries[index].newer = NIL
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
