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


cdef list flow_rows(FlowTable *t, uint32_t limit):
    """Every flow, oldest first: (proto, client ip, client port, vip, vport, backend ip,
    backend port, state name, expires), addresses packed."""
    cdef uint32_t index = t.oldest, size
    cdef Flow *f
    cdef Addr client, vip, backend
    out = []
    while index != NIL and len(out) < limit:
        f = &t.entries[index]
        size = address_size(f.version)
        client, vip, backend = flow_client(t, index), flow_vip(t, index), flow_backend(t, index)
        out.append((f.proto, packed(&client, size), f.client_port, packed(&vip, size),
                    f.vport, packed(&backend, size), f.backend_port, STATE_NAMES[f.state],
                    f.expires))
        index = f.newer
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
