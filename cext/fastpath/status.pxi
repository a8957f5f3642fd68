# Included by fastpath.pyx. What Python reads of a Core for status and metrics: the
# counters by their contract names, the flows, the flows by state. Slow path, with the GIL.

cdef dict named_counters(Core *c):
    """Non-zero counters, named as every data path names them: verdicts.verdict_counter for
    a verdict, verdicts.EVENT_COUNTERS (EVENT_COUNTER_NAMES, in E_* order) for an event."""
    cdef int a, r, e
    named = {}
    for a in range(ACT_COUNT):
        for r in range(R_COUNT):
            if c.verdicts[a][r]:
                named[f"{ACTION_NAMES[a]}_{REASON_NAMES[r]}"] = c.verdicts[a][r]
    for e in range(E_COUNT):
        if c.events[e]:
            named[EVENT_COUNTER_NAMES[e]] = c.events[e]
    return named


cdef inline uint64_t seconds_between(uint32_t later, uint32_t earlier) noexcept nogil:
    """later - earlier, both modulo 2^24: a difference of 2^23 or more is taken as negative
    (a flow stamped a second after the clock was read, a clock that went back) and is 0."""
    cdef uint32_t gap = (later - earlier) & <uint32_t> CREATED_MASK
    return gap if gap < (1 << 23) else 0


cdef uint32_t *flow_ages(FlowTable *t, double now) noexcept nogil:
    """Each flow's age in whole seconds, by its place from the newest (0) on; NULL when
    memory is short. An entry keeps its creation time modulo 2^24 s: the table's
    insertion order unwraps it, exact unless the table took no new flow for 97 days (a
    gap of 2^23 s or more reads as none)."""
    cdef uint32_t *ages = <uint32_t *> malloc((t.count or 1) * sizeof(uint32_t))
    cdef uint32_t index = t.newest, place = 0, created, newer_created = 0
    cdef uint64_t age = 0
    if ages == NULL:
        return NULL
    while index != NIL:
        created = flow_created(&t.entries[index])
        if place == 0:
            age = 0
            if now > 0:
                age = seconds_between(<uint32_t> ((<uint64_t> now) & CREATED_MASK), created)
        else:
            age += seconds_between(newer_created, created)
        ages[place] = <uint32_t> age if age >> 32 == 0 else NIL  # NIL: the largest uint32
        newer_created = created
        place += 1
        index = t.entries[index].older
    return ages


cdef list flow_rows(FlowTable *t, uint32_t limit, double now):
    """Every flow, oldest first: (proto, client ip, client port, vip, vport, backend ip,
    backend port, state name, expires, age in seconds), addresses packed."""
    cdef uint32_t index = t.oldest, size, place = 0
    cdef uint32_t *ages = flow_ages(t, now)
    cdef Flow *f
    cdef Addr client, vip, backend
    if ages == NULL:
        raise MemoryError()
    out = []
    try:
        while index != NIL and len(out) < limit:
            f = &t.entries[index]
            size = address_size(flow_version(f))
            client, vip, backend = flow_client(t, index), flow_vip(t, index), flow_backend(t, index)
            out.append((f.proto, packed(&client, size), f.client_port, packed(&vip, size),
                        f.vport, packed(&backend, size), f.backend_port, STATE_NAMES[f.state],
                        f.expires, ages[t.count - 1 - place]))
            place += 1
            index = f.newer
    finally:
        free(ages)
    return out


cdef inline bytes packed(const Addr *a, uint32_t size):
    return (<const char *> addr_bytes(a, size))[:size]


cdef dict flow_state_counts(FlowTable *t):
    """{"tcp/established": n, ...} over every flow, without a Python object per flow."""
    cdef uint64_t counts[3][S_COUNT]
    cdef uint32_t index = t.oldest
    cdef uint8_t proto
    memset(counts, 0, sizeof(counts))
    while index != NIL:
        proto = t.entries[index].proto
        counts[0 if proto == PROTO_TCP else 2 if proto == PROTO_SCTP else 1][t.entries[index].state] += 1
        index = t.entries[index].newer
    names = ("tcp", "udp", "sctp")  # as flows.flow_summary names them
    return {f"{names[p]}/{STATE_NAMES[st]}": counts[p][st]
            for p in range(3) for st in range(S_COUNT) if counts[p][st]}
