# Included by fastpath.pyx, after the parts of the core. FastCore: the Python face of a Core.
# It owns the C state; the compiled data paths program it, FastQueue workers hand it packets
# without the GIL. Every method takes the Core's lock (a worker may be deciding meanwhile);
# hold() keeps it across several calls, so that a worker never sees half a sync.


cdef class _Held:
    """The Core's lock, held from __enter__ to __exit__ (FastCore.hold())."""
    cdef FastCore core

    def __cinit__(self, FastCore core):
        self.core = core

    def __enter__(self):
        with nogil:
            pthread_mutex_lock(&self.core.c.lock)
        return self

    def __exit__(self, *exc_info):
        pthread_mutex_unlock(&self.core.c.lock)
        return False

cdef class FastCore:
    """The connection table, the frontends and the verdicts of the fast path, in C."""

    cdef Core c
    cdef bint locked  # the mutex was initialised

    def __cinit__(self, list ranges, uint32_t capacity, tuple timeouts, uint64_t seed,
                  uint32_t affinity_limit=0):
        """affinity_limit: clients remembered for session affinity; 0: a share of capacity."""
        # Python zeroes the object first: every pointer starts NULL, every count 0, so
        # __dealloc__ is right whatever failed here.
        if capacity < 1:
            raise ValueError(f"connection table capacity must be positive, got {capacity}")
        if len(timeouts) != S_COUNT:
            raise ValueError(f"{S_COUNT} timeouts expected (Timeouts.in_state_order())")
        cdef pthread_mutexattr_t attributes
        pthread_mutexattr_init(&attributes)
        pthread_mutexattr_settype(&attributes, PTHREAD_MUTEX_RECURSIVE)
        pthread_mutex_init(&self.c.lock, &attributes)
        pthread_mutexattr_destroy(&attributes)
        self.locked = True
        services_init(&self.c.services, ranges)
        flows_init(&self.c.flows, capacity, timeouts)
        self.c.flow_seed = seed ^ SEED_FLOW
        self.c.affinity.limit = affinity_limit or affinity_capacity(capacity)

    def __dealloc__(self):
        if self.locked:
            pthread_mutex_destroy(&self.c.lock)
        services_free(&self.c.services)
        flows_free(&self.c.flows)
        free(self.c.affinity.entries)
        free(self.c.trace.events)

    def hold(self):
        """`with core.hold():` keeps the workers out for the whole block (a sync)."""
        return _Held(self)

    # --- frontends (slow path, with the GIL) ---------------------------------------------

    def set_frontend(self, uint32_t slot, bytes vip, uint16_t proto, uint16_t port,
                     list backends, table, double affinity_timeout=0, list draining=None,
                     bint drop_when_empty=False, list marks=None, uint8_t policy=0):
        """Installs a frontend in a slot for a packed VIP (4 or 16 bytes): backends
        [(packed ip, port)] of its family, table array('H'),
        and the draining backends, which keep their open flows but get no new ones.
        drop_when_empty: with no backends, drop new flows instead of rejecting them.
        marks: the offload path's mark for each backend, chosen then draining.
        policy: POLICY_*, how the frontend's sources are told apart."""
        cdef Frontend *f
        with self.hold():
            if len(vip) == 16:
                flows_widen(&self.c.flows)  # before any IPv6 flow can be made
            f = frontend_install(&self.c.services, slot, vip, proto, port, backends,
                                 backends + (draining or []), table, marks)
            f.affinity_timeout = affinity_timeout
            f.drop_when_empty = drop_when_empty
            f.policy = policy
            if affinity_timeout > 0:
                affinity_reserve(&self.c.affinity)

    def decided(self, uint32_t slot):
        """New flows sent to each backend of a slot (chosen, then draining) since it was
        installed."""
        cdef uint32_t i
        cdef Frontend *f
        with self.hold():
            if slot >= self.c.services.slots or not self.c.services.frontends[slot].used:
                return []
            f = &self.c.services.frontends[slot]
            return [f.decided[i] for i in range(f.present_count)]

    def refused(self, uint32_t slot):
        """New flows a slot refused since it was installed, by REFUSAL_NAMES."""
        cdef Frontend *f
        with self.hold():
            if slot >= self.c.services.slots or not self.c.services.frontends[slot].used:
                return [0] * REFUSE_COUNT
            f = &self.c.services.frontends[slot]
            return [f.refused[i] for i in range(REFUSE_COUNT)]

    def remove_frontend(self, uint32_t slot):
        with self.hold():
            if slot < self.c.services.slots:
                frontend_free(&self.c.services, slot)

    def rebuild_maps(self):
        """Rebuilds the frontend, VIP and backend maps from the frontends in use."""
        with self.hold():
            services_rebuild_maps(&self.c.services)

    def retire_flows_to_removed_backends(self, double now):
        """As the reference: UDP flows whose backend is no longer chosen are dropped (the
        next datagram picks anew); TCP flows whose backend left the service altogether are
        marked, so that the client's next packet gets a reset."""
        retire_flows_to_removed_backends(&self.c, now)

    # --- tracing (trace.pxi) ---------------------------------------------------------------

    def trace_start(self, uint32_t size):
        """Records decisions from now on, up to size (rounded up to a power of two) not yet
        taken; again while on, it keeps the ring."""
        cdef uint32_t rounded = 1
        if size < 1 or size > TRACE_MAX_SIZE:
            raise ValueError(f"a trace ring of 1 to {TRACE_MAX_SIZE} events, not {size}")
        while rounded < size:
            rounded <<= 1
        with self.hold():
            if self.c.trace.events != NULL:
                return
            self.c.trace.events = <TraceEvent *> calloc(rounded, sizeof(TraceEvent))
            if self.c.trace.events == NULL:
                raise MemoryError()
            self.c.trace.size = rounded
            self.c.trace.written = self.c.trace.taken = self.c.trace.lost = 0

    def trace_stop(self):
        """Stops recording and frees the ring: the packets pay nothing again."""
        with self.hold():
            free(self.c.trace.events)
            self.c.trace.events = NULL
            self.c.trace.size = 0

    def trace_take(self):
        """(events recorded since the last call, oldest first, as TraceTuple; events lost
        since tracing started, because the ring was full)."""
        cdef TraceEvent *events = NULL
        cdef uint64_t count = 0, lost = 0
        cdef bint on
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            on = self.c.trace.events != NULL
            if on:
                count = trace_copy(&self.c, &events)
                lost = self.c.trace.lost
            pthread_mutex_unlock(&self.c.lock)
        if not on:
            return [], 0
        if events == NULL:
            raise MemoryError()
        try:
            return trace_rows(events, count), lost
        finally:
            free(events)

    # --- packets and status ----------------------------------------------------------------

    def process(self, const uint8_t[:] raw, double now, bint partial=False, int source=0):
        """(action, reason, payload or None, proxied, masquerade) for one packet.

        partial: the packet's L4 checksum field holds only the pseudo-header sum, as the
        kernel reports with NFQA_SKB_CSUMNOTREADY. source: the SOURCE_* bits of its mark.
        """
        cdef uint32_t length = raw.shape[0]
        cdef bytearray buf = bytearray(raw)
        cdef uint8_t *data = <uint8_t *> (<char *> buf) if length else <uint8_t *> b""
        cdef Verdict v
        with self.hold():
            v = process_packet(&self.c, data, length, now, partial, source)
        payload = bytes(buf[:v.length]) if v.action == ACT_ACCEPT else None
        return ACTION_NAMES[v.action], REASON_NAMES[v.reason], payload, bool(v.proxied), bool(v.masquerade)

    def decide_first(self, const uint8_t[:] raw, double now, int source=0):
        """The offload path's verdict for a flow's first packet: (action, reason, backend
        mark, proxied, masquerade). The packet is not rewritten."""
        cdef uint32_t length = raw.shape[0]
        cdef bytearray buf = bytearray(raw)
        cdef uint8_t *data = <uint8_t *> (<char *> buf) if length else <uint8_t *> b""
        cdef Verdict v
        with self.hold():
            v = process_first_packet(&self.c, data, length, now, source)
        return ACTION_NAMES[v.action], REASON_NAMES[v.reason], v.mark, bool(v.proxied), bool(v.masquerade)

    def remember_affinity(self, uint8_t proto, bytes client, bytes vip, uint16_t vport,
                          bytes backend, uint16_t backend_port, double expires):
        """Records a client's sticky backend (packed addresses); False when the table is
        full or no frontend has session affinity (the table is not allocated)."""
        if len(client) not in (4, 16) or len(vip) != len(client) or len(backend) != len(client):
            raise ValueError("client, VIP and backend: 4 or 16 bytes each, one family")
        with self.hold():
            if self.c.affinity.entries == NULL:
                return False
            return affinity_remember(&self.c.affinity, proto,
                                     addr_read(<const uint8_t *> <const char *> client, len(client)),
                                     addr_read(<const uint8_t *> <const char *> vip, len(vip)), vport,
                                     addr_read(<const uint8_t *> <const char *> backend, len(backend)),
                                     backend_port, expires)

    def affinity_entry(self, uint8_t proto, bytes client, bytes vip, uint16_t vport, double now):
        """A client's live sticky backend for a service port: (backend, backend port,
        expires), addresses packed; None when it has none (or it expired). Nothing changes."""
        cdef Affinity *e
        cdef uint32_t size = len(client)
        if size not in (4, 16) or len(vip) != size:
            raise ValueError("client and VIP: 4 or 16 bytes each, one family")
        with self.hold():
            if self.c.affinity.entries == NULL:
                return None
            e = affinity_find(&self.c.affinity, proto,
                              addr_read(<const uint8_t *> <const char *> client, size),
                              addr_read(<const uint8_t *> <const char *> vip, size), vport)
            if e == NULL or e.expires <= now:
                return None
            return packed(&e.backend_ip, size), e.backend_port, e.expires

    def expire(self, double now):
        """Drops expired flows (returned: how many) and expired client affinities."""
        with self.hold():
            affinity_expire(&self.c.affinity, now)
            return flows_expire(&self.c.flows, now)

    def __len__(self):
        return self.c.flows.count

    def counters(self):
        """Non-zero counters, named as the reference names them."""
        with self.hold():
            return named_counters(&self.c)

    def flows(self, double now, uint32_t limit=0xFFFFFFFF):
        """Every flow (up to limit), oldest first: (proto, client ip, client port, vip,
        vport, backend ip, backend port, state name, expires, age in whole seconds at
        now), addresses packed."""
        with self.hold():
            return flow_rows(&self.c.flows, limit, now)

    def state_counts(self):
        """{"tcp/established": n, ...} over every flow, without a Python object per flow."""
        with self.hold():
            return flow_state_counts(&self.c.flows)

    @property
    def evicted(self):
        return self.c.flows.evicted

    @property
    def expired(self):
        return self.c.flows.expired

    @property
    def affinity_clients(self):
        return self.c.affinity.count

    @property
    def affinity_limit(self):
        return self.c.affinity.limit

    @staticmethod
    def bytes_per_flow(int version=4):
        """What one tracked flow costs: its entry plus two index slots at load factor 0.5;
        an IPv6 flow also its addresses whole, in the table's second array."""
        if version not in (4, 6):
            raise ValueError(f"IP version 4 or 6, not {version}")
        return sizeof(Flow) + 2 * 2 * sizeof(uint32_t) + (sizeof(WideAddrs) if version == 6 else 0)
