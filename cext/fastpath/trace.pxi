# Included by fastpath.pyx, before decide.pxi. `nfqproxy trace`: decisions recorded in a ring
# while someone traces. With nobody tracing the ring is not allocated, and only a new flow
# or a refused packet pays a test of its pointer (decide.pxi tests it before calling in). The queue worker writes
# under the Core's lock, and Python takes events under it, so the ring needs nothing more.

cdef enum:
    TRACE_MAX_SIZE = 1 << 20   # events: 80 MiB at most


cdef inline bint tracing(Core *c) noexcept nogil:
    return c.trace.events != NULL


cdef inline TraceEvent *trace_slot(Core *c) noexcept nogil:
    """The next free event, or NULL (counted lost) when Python has not read the ring: a
    trace shows what it could keep, and says how much it missed."""
    cdef TraceRing *r = &c.trace
    if r.written - r.taken >= r.size:
        r.lost += 1
        return NULL
    r.written += 1
    return &r.events[(r.written - 1) & (r.size - 1)]


cdef void trace_new_flow(Core *c, Headers *h, FlowSpec *flow, double now) noexcept nogil:
    cdef TraceEvent *e = trace_slot(c)
    if e == NULL:
        return
    e.time, e.action, e.reason, e.has_tuple = now, ACT_ACCEPT, R_NEW_FLOW, 1
    e.proto, e.version, e.src, e.sport, e.dst, e.dport = h.proto, h.version, h.src, h.sport, h.dst, h.dport
    e.backend, e.backend_port = flow.backend_ip, flow.backend_port


cdef inline bint reason_has_tuple(int reason) noexcept nogil:
    """Whether a refusal with this reason came after the packet's ports were read (the
    ICMP ones never fill them: they are about the flow inside)."""
    return (reason == R_NO_SERVICE or reason == R_PORT_NOT_SERVED or reason == R_NO_ENDPOINTS
            or reason == R_NO_LOCAL_ENDPOINTS or reason == R_BACKEND_REMOVED
            or reason == R_UNKNOWN_REPLY)


cdef void trace_refusal(Core *c, Headers *h, Verdict *v, double now) noexcept nogil:
    """A reject or a drop, with the packet's tuple when it was read."""
    cdef TraceEvent *e = trace_slot(c)
    if e == NULL:
        return
    e.time, e.action, e.reason = now, v.action, v.reason
    e.has_tuple = reason_has_tuple(v.reason)
    e.backend_port = 0
    if e.has_tuple:
        e.proto, e.version, e.src, e.sport, e.dst, e.dport = h.proto, h.version, h.src, h.sport, h.dst, h.dport
    else:
        e.proto, e.version, e.sport, e.dport = 0, 0, 0, 0


cdef uint64_t trace_copy(Core *c, TraceEvent **out) noexcept nogil:
    """Moves the events recorded since the last call into a new array (*out, for the
    caller to free): under the lock, quickly, so that the queue worker waits only for a
    copy, not for Python objects. Returns how many; *out is NULL when memory is short."""
    cdef TraceRing *r = &c.trace
    cdef uint64_t count = r.written - r.taken, first, i
    out[0] = <TraceEvent *> malloc((count or 1) * sizeof(TraceEvent))
    if out[0] == NULL:
        return 0
    for i in range(count):
        first = (r.taken + i) & (r.size - 1)
        out[0][i] = r.events[first]
    r.taken = r.written
    return count


cdef list trace_rows(TraceEvent *events, uint64_t count):
    """The copied events as trace tuples (_fastpath.pyi TraceTuple), with the GIL."""
    cdef TraceEvent *e
    cdef uint32_t size
    cdef uint64_t i
    out = []
    for i in range(count):
        e = &events[i]
        if e.has_tuple:
            size = address_size(e.version)
            out.append((e.time, ACTION_NAMES[e.action], REASON_NAMES[e.reason], e.proto,
                        packed(&e.src, size), e.sport, packed(&e.dst, size), e.dport,
                        packed(&e.backend, size) if e.reason == R_NEW_FLOW else None,
                        e.backend_port))
        else:
            out.append((e.time, ACTION_NAMES[e.action], REASON_NAMES[e.reason], 0, None, 0,
                        None, 0, None, 0))
    return out
