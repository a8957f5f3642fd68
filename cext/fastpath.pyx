# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The fast data path's core in C: parse, look up, rewrite, verdict, with no Python per packet.

It implements exactly the semantics of nfqproxy.datapath.reference.datapath; the differential tests
feed both the same packets and require identical verdicts, bytes and counters. Python is
only involved when tables change (set_frontend / rebuild_maps) and for status snapshots.

Connection table: a fixed array of 40-byte Flow entries on a FIFO list (oldest first, for
eviction), and two open-addressing indexes (client side and backend side) of uint32 slots
at load factor <= 0.5: at most 40 + 2 * 2 * 4 = 56 bytes per flow, allocated once.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset, strerror

from includes.hashing cimport flow_hash, mix64
from includes.netlink cimport *

from nfqproxy.datapath.flows import affinity_capacity
from nfqproxy.datapath.hashing import SEED_FLOW

# --- verdicts, reasons and states: the values match the reference's names --------------

cdef enum:
    ACT_ACCEPT = 0
    ACT_DROP = 1
    ACT_REJECT = 2
    ACT_COUNT = 3

cdef enum:
    R_REQUEST = 0
    R_NEW_FLOW
    R_REPLY
    R_REPLY_RECOVERED
    R_UNKNOWN_REPLY
    R_NO_SERVICE
    R_PORT_NOT_SERVED
    R_NO_ENDPOINTS
    R_TRUNCATED_IP
    R_BAD_IHL
    R_BAD_LENGTH
    R_NOT_IPV4
    R_FRAGMENT
    R_TRUNCATED_L4
    R_UNSUPPORTED
    R_BACKEND_REMOVED
    R_ICMP_ERROR
    R_ICMP_UNKNOWN_FLOW
    R_ICMP_BAD_INNER
    R_NO_LOCAL_ENDPOINTS
    R_COUNT

# Seconds between scans of a full connection table for expired flows (conntable.py has
# the same); in between, a new flow evicts the oldest.
cdef double FULL_SCAN_INTERVAL = 1.0

ACTION_NAMES = ("accept", "drop", "reject")
REASON_NAMES = (
    "request", "new_flow", "reply", "reply_recovered", "unknown_reply", "no_service",
    "port_not_served", "no_endpoints", "truncated_ip_header", "bad_ihl", "bad_total_length",
    "not_ipv4", "fragment", "truncated_l4_header", "unsupported_protocol", "backend_removed",
    "icmp_error", "icmp_unknown_flow", "icmp_bad_inner_header", "no_local_endpoints",
)

cdef enum:
    S_SYN_SENT = 0
    S_ESTABLISHED
    S_CLOSING
    S_RESET
    S_UDP_UNREPLIED
    S_UDP_REPLIED
    S_BACKEND_GONE   # its backend left the service: the next request gets a reset
    S_COUNT

STATE_NAMES = ("syn_sent", "established", "closing", "reset", "unreplied", "replied",
               "backend_gone")

cdef enum:
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_ACK = 0x10

cdef uint32_t NIL = 0xFFFFFFFF
cdef uint64_t EMPTY_KEY = 0xFFFFFFFFFFFFFFFF
cdef uint32_t AMBIGUOUS = 0xFFFFFFFE
cdef int MAX_RANGES = 16


cdef struct Flow:
    uint32_t client_ip    # addresses as they sit in the packet (network order)
    uint32_t vip
    uint32_t backend_ip
    uint16_t client_port  # ports in host order
    uint16_t vport
    uint16_t backend_port
    uint8_t proto
    uint8_t state
    uint32_t older        # FIFO links: insertion order, for eviction when full
    uint32_t newer
    double expires


cdef struct Frontend:
    uint32_t vip
    uint16_t port
    uint8_t proto
    uint8_t used
    uint32_t backend_count   # chosen: in the Maglev table
    uint32_t present_count   # chosen, then draining ones: still part of the service
    uint32_t *backend_ips
    uint16_t *backend_ports
    uint16_t *table
    uint32_t table_size
    double affinity_timeout  # sessionAffinity ClientIP seconds; 0: none
    uint8_t drop_when_empty  # no backends by internalTrafficPolicy Local: drop, not reject


cdef struct Affinity:         # one client's sticky backend for one service port
    uint32_t client_ip
    uint32_t vip
    uint32_t backend_ip
    uint16_t vport
    uint16_t backend_port
    uint8_t proto
    uint8_t used
    double expires


cdef struct Verdict:
    int action
    int reason
    int proxied
    int hairpin
    uint32_t length       # bytes of the (rewritten) packet to hand back


cdef inline uint64_t index_hash(uint8_t proto, uint32_t a, uint16_t pa, uint32_t b, uint16_t pb) noexcept nogil:
    # For the internal indexes only: any good mix will do.
    return mix64(((<uint64_t> a) << 32 | b) ^ mix64((<uint64_t> pa) << 24 | (<uint64_t> pb) << 8 | proto))


# --- packet helpers -----------------------------------------------------------------------

cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline uint32_t rd32raw(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint16_t checksum_replace(uint16_t check, const uint8_t *old, const uint8_t *new,
                                      int length) noexcept nogil:
    """RFC 1624 eqn. 3 over big-endian 16-bit words, as checksum.checksum_replace."""
    cdef uint32_t total = (~check) & 0xFFFF
    cdef int i
    for i in range(0, length, 2):
        total += ((~rd16(old + i)) & 0xFFFF) + rd16(new + i)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


cdef inline uint64_t native_sum(const uint8_t *p, uint32_t n) noexcept nogil:
    """One's complement sum of p in native byte order, 32 bits at a time (RFC 1071 4.1)."""
    cdef uint64_t acc = 0
    cdef uint32_t word
    cdef uint16_t half = 0
    while n >= 4:
        memcpy(&word, p, 4)
        acc += word
        p += 4
        n -= 4
    if n >= 2:
        memcpy(&half, p, 2)
        acc += half
        p += 2
        n -= 2
    if n:
        half = 0
        memcpy(&half, p, 1)  # the odd byte, padded with a zero byte after it
        acc += half
    return acc


cdef inline uint16_t fold_to_big_endian(uint64_t acc) noexcept nogil:
    cdef uint16_t one = 1
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    if (<uint8_t *> &one)[0] == 1:  # little-endian: the sum of swapped words is swapped
        acc = ((acc & 0xFF) << 8) | (acc >> 8)
    return <uint16_t> acc


cdef inline uint16_t full_l4_checksum(uint8_t *pkt, uint32_t hl, uint8_t proto) noexcept nogil:
    """The TCP or UDP checksum of the segment, computed from scratch with its field zeroed."""
    cdef uint32_t total = rd16(pkt + 2)
    cdef uint32_t length = total - hl
    cdef uint8_t *l4 = pkt + hl
    cdef int sum_at = 16 if proto == 6 else 6
    cdef uint64_t acc
    wr16(l4 + sum_at, 0)
    acc = fold_to_big_endian(native_sum(l4, length))
    acc += rd16(pkt + 12) + rd16(pkt + 14) + rd16(pkt + 16) + rd16(pkt + 18) + proto + length
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    acc = (~acc) & 0xFFFF
    if proto == 17 and acc == 0:
        acc = 0xFFFF
    return <uint16_t> acc


cdef inline void rewrite(uint8_t *pkt, uint32_t hl, uint8_t proto, uint32_t address, uint16_t port,
                         int destination, bint partial) noexcept nogil:
    cdef int addr_at = 16 if destination else 12
    cdef uint8_t *l4 = pkt + hl
    cdef int port_at = 2 if destination else 0
    cdef int sum_at = 16 if proto == 6 else 6
    cdef uint8_t old_field[6]
    cdef uint8_t new_field[6]
    cdef uint16_t l4_sum
    memcpy(old_field, pkt + addr_at, 4)
    memcpy(new_field, &address, 4)
    wr16(pkt + 10, checksum_replace(rd16(pkt + 10), old_field, new_field, 4))
    l4_sum = rd16(l4 + sum_at)
    if partial:
        # CHECKSUM_PARTIAL (a GSO packet, or any packet sent over a veth): the field holds
        # only the pseudo-header sum, for the NIC to complete. But a verdict with a payload
        # makes the kernel mark the packet CHECKSUM_NONE (nfqnl_mangle), so it must leave
        # with its full checksum: rewrite first, then sum the whole segment.
        memcpy(pkt + addr_at, &address, 4)
        wr16(l4 + port_at, port)
        wr16(l4 + sum_at, full_l4_checksum(pkt, hl, proto))
        return
    elif proto == 6 or l4_sum != 0:  # UDP checksum 0 means "none"
        memcpy(old_field + 4, l4 + port_at, 2)
        wr16(new_field + 4, port)
        l4_sum = checksum_replace(l4_sum, old_field, new_field, 6)
        if proto == 17 and l4_sum == 0:
            l4_sum = 0xFFFF
        wr16(l4 + sum_at, l4_sum)
    memcpy(pkt + addr_at, &address, 4)
    wr16(l4 + port_at, port)


cdef inline int initial_state(uint8_t proto, uint8_t flags) noexcept nogil:
    if proto != 6:
        return S_UDP_UNREPLIED
    if flags & TCP_RST:
        return S_RESET
    if flags & TCP_SYN and not flags & TCP_ACK:
        return S_SYN_SENT
    return S_ESTABLISHED


cdef inline int next_state(int state, int from_client, uint8_t flags) noexcept nogil:
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


# --- a small open-addressing map uint64 -> uint32, rebuilt whole on table changes -------

cdef struct U64Map:
    uint64_t *keys
    uint32_t *values
    uint64_t mask


cdef int map_init(U64Map *m, uint64_t entries) except -1:
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


cdef inline uint32_t *map_slot(U64Map *m, uint64_t key, bint insert) noexcept nogil:
    cdef uint64_t i = mix64(key) & m.mask
    while m.keys[i] != EMPTY_KEY:
        if m.keys[i] == key:
            return &m.values[i]
        i = (i + 1) & m.mask
    if insert:
        m.keys[i] = key
        return &m.values[i]
    return NULL


cdef inline uint64_t frontend_key(uint32_t vip, uint8_t proto, uint16_t port) noexcept nogil:
    return (<uint64_t> vip) << 24 | (<uint64_t> proto) << 16 | port


cdef inline uint64_t backend_key(uint8_t proto, uint32_t ip, uint16_t port) noexcept nogil:
    return (<uint64_t> proto) << 48 | (<uint64_t> ip) << 16 | port


cdef class FastCore:
    cdef Flow *entries
    cdef uint32_t capacity, count, free_head, oldest, newest
    cdef uint32_t *forward_index
    cdef uint32_t *reply_index
    cdef uint64_t index_mask
    cdef Frontend *frontends
    cdef uint32_t frontend_slots
    cdef U64Map frontend_map, vip_map, backend_map
    cdef uint32_t range_net[16]
    cdef uint32_t range_mask[16]
    cdef int range_count
    cdef uint64_t seed, flow_seed
    cdef double timeouts[S_COUNT]
    cdef uint64_t verdicts[ACT_COUNT][R_COUNT]
    cdef public uint64_t ip_options, evicted, expired, udp_resteered, tcp_retired
    cdef double last_full_scan  # when a full table was last scanned for expired flows
    cdef Affinity *affinity   # open addressing, backward-shift deletion; allocated on first use
    cdef uint64_t affinity_mask
    cdef uint32_t affinity_max, affinity_count
    cdef public uint64_t affinity_hits, affinity_full

    def __cinit__(self, list ranges, uint32_t capacity, tuple timeouts, uint64_t seed):
        cdef uint64_t size = 16
        cdef uint32_t i
        if capacity < 1:
            raise ValueError(f"connection table capacity must be positive, got {capacity}")
        if len(ranges) > MAX_RANGES:
            raise ValueError(f"at most {MAX_RANGES} service ranges")
        self.capacity = capacity
        self.entries = <Flow *> malloc(capacity * sizeof(Flow))
        while size < (<uint64_t> capacity) * 2:
            size <<= 1
        self.index_mask = size - 1
        self.forward_index = <uint32_t *> malloc(size * sizeof(uint32_t))
        self.reply_index = <uint32_t *> malloc(size * sizeof(uint32_t))
        if self.entries == NULL or self.forward_index == NULL or self.reply_index == NULL:
            raise MemoryError()
        for i in range(<uint32_t> size):
            self.forward_index[i] = NIL
            self.reply_index[i] = NIL
        for i in range(capacity):  # the free list threads through 'newer'
            self.entries[i].newer = i + 1 if i + 1 < capacity else NIL
        self.free_head = 0
        self.count = 0
        self.oldest = self.newest = NIL
        self.last_full_scan = -1e300
        for i, (network, mask) in enumerate(ranges):
            self.range_net[i] = network
            self.range_mask[i] = mask
        self.range_count = len(ranges)
        for i in range(S_COUNT):
            self.timeouts[i] = timeouts[i]
        self.seed = seed
        self.flow_seed = seed ^ SEED_FLOW
        self.frontend_slots = 0
        self.frontends = NULL
        map_init(&self.frontend_map, 1)
        map_init(&self.vip_map, 1)
        map_init(&self.backend_map, 1)
        self.affinity = NULL
        self.affinity_max = affinity_capacity(capacity)
        self.affinity_count = 0

    def __dealloc__(self):
        cdef uint32_t i
        for i in range(self.frontend_slots):
            self._free_frontend(i)
        free(self.frontends)
        free(self.entries)
        free(self.forward_index)
        free(self.reply_index)
        free(self.affinity)
        free(self.frontend_map.keys); free(self.frontend_map.values)
        free(self.vip_map.keys); free(self.vip_map.values)
        free(self.backend_map.keys); free(self.backend_map.values)

    # --- frontends (slow path, with the GIL) ---------------------------------------------

    cdef void _free_frontend(self, uint32_t slot):
        cdef Frontend *f = &self.frontends[slot]
        if f.used:
            free(f.backend_ips); free(f.backend_ports); free(f.table)
            f.used = 0

    def set_frontend(self, uint32_t slot, uint32_t vip, uint8_t proto, uint16_t port,
                     list backends, table, double affinity_timeout=0, list draining=None,
                     bint drop_when_empty=False):
        """Installs a frontend in a slot: backends [(packed ip, port)], table array('H'),
        and the draining backends, which keep their open flows but get no new ones.
        drop_when_empty: with no backends, drop new flows instead of rejecting them."""
        cdef list present = backends + (draining or [])
        cdef uint32_t i, n = len(backends), total = len(present), size = len(table)
        cdef uint64_t affinity_size = 16
        cdef Frontend *grown
        cdef Frontend *f
        cdef bytes packed
        cdef const uint16_t[:] slots = table
        if slot >= self.frontend_slots:
            grown = <Frontend *> calloc(slot * 2 + 16, sizeof(Frontend))
            if grown == NULL:
                raise MemoryError()
            if self.frontends != NULL:
                memcpy(grown, self.frontends, self.frontend_slots * sizeof(Frontend))
                free(self.frontends)
            self.frontends = grown
            self.frontend_slots = slot * 2 + 16
        self._free_frontend(slot)
        f = &self.frontends[slot]
        f.backend_ips = <uint32_t *> malloc((total or 1) * sizeof(uint32_t))
        f.backend_ports = <uint16_t *> malloc((total or 1) * sizeof(uint16_t))
        f.table = <uint16_t *> malloc((size or 1) * sizeof(uint16_t))
        if f.backend_ips == NULL or f.backend_ports == NULL or f.table == NULL:
            raise MemoryError()
        for i in range(total):
            packed, backend_port = present[i]
            if len(packed) != 4:
                raise ValueError("the fast path handles IPv4 backends only")
            f.backend_ips[i] = rd32raw(<const uint8_t *> <const char *> packed)
            f.backend_ports[i] = backend_port
        for i in range(size):
            f.table[i] = slots[i]
        f.vip, f.proto, f.port = vip, proto, port
        f.backend_count, f.present_count, f.table_size, f.used = n, total, size, 1
        f.affinity_timeout = affinity_timeout
        f.drop_when_empty = drop_when_empty
        if affinity_timeout > 0 and self.affinity == NULL:
            while affinity_size < (<uint64_t> self.affinity_max) * 2:
                affinity_size <<= 1
            # calloc: untouched pages cost no memory until clients are remembered.
            self.affinity = <Affinity *> calloc(affinity_size, sizeof(Affinity))
            if self.affinity == NULL:
                raise MemoryError()
            self.affinity_mask = affinity_size - 1

    def remove_frontend(self, uint32_t slot):
        if slot < self.frontend_slots:
            self._free_frontend(slot)

    def rebuild_maps(self):
        """Rebuilds the frontend, VIP and backend maps from the frontends in use."""
        cdef uint32_t i, j, used = 0, backends = 0
        cdef uint32_t *value
        cdef Frontend *f
        for i in range(self.frontend_slots):
            if self.frontends[i].used:
                used += 1
                backends += self.frontends[i].backend_count
        map_init(&self.frontend_map, used)
        map_init(&self.vip_map, used)
        map_init(&self.backend_map, backends)
        for i in range(self.frontend_slots):
            f = &self.frontends[i]
            if not f.used:
                continue
            map_slot(&self.frontend_map, frontend_key(f.vip, f.proto, f.port), True)[0] = i
            map_slot(&self.vip_map, f.vip, True)[0] = 1
            for j in range(f.backend_count):
                value = map_slot(&self.backend_map, backend_key(f.proto, f.backend_ips[j], f.backend_ports[j]), False)
                if value == NULL:
                    map_slot(&self.backend_map, backend_key(f.proto, f.backend_ips[j], f.backend_ports[j]), True)[0] = i
                elif value[0] != i:
                    value[0] = AMBIGUOUS

    def retire_flows_to_removed_backends(self, double now):
        """As the reference: UDP flows whose backend is no longer chosen are dropped (the
        next datagram picks anew); TCP flows whose backend left the service altogether are
        marked, so that the client's next packet gets a reset."""
        cdef uint32_t index = self.oldest, next_index
        cdef Flow *flow
        cdef uint32_t *slot
        cdef Frontend *f
        cdef uint32_t j, limit
        cdef bint alive
        while index != NIL:
            flow = &self.entries[index]
            next_index = flow.newer
            if flow.proto == 6 and flow.state == S_BACKEND_GONE:
                index = next_index
                continue
            slot = map_slot(&self.frontend_map, frontend_key(flow.vip, flow.proto, flow.vport), False)
            alive = False
            if slot != NULL:
                f = &self.frontends[slot[0]]
                limit = f.present_count if flow.proto == 6 else f.backend_count
                for j in range(limit):
                    if f.backend_ips[j] == flow.backend_ip and f.backend_ports[j] == flow.backend_port:
                        alive = True
                        break
            if not alive:
                if flow.proto == 6:
                    flow.state = S_BACKEND_GONE
                    flow.expires = now + self.timeouts[S_BACKEND_GONE]
                    self.tcp_retired += 1
                else:
                    self._remove(index)
                    self.udp_resteered += 1
            index = next_index

    # --- the connection table (no GIL) ---------------------------------------------------

    cdef inline uint64_t _forward_home(self, Flow *f) noexcept nogil:
        return index_hash(f.proto, f.client_ip, f.client_port, f.vip, f.vport) & self.index_mask

    cdef inline uint64_t _reply_home(self, Flow *f) noexcept nogil:
        return index_hash(f.proto, f.backend_ip, f.backend_port, f.client_ip, f.client_port) & self.index_mask

    cdef uint32_t _find(self, bint reply, uint8_t proto, uint32_t a, uint16_t pa, uint32_t b,
                        uint16_t pb) noexcept nogil:
        cdef uint32_t *index = self.reply_index if reply else self.forward_index
        cdef uint64_t i = index_hash(proto, a, pa, b, pb) & self.index_mask
        cdef Flow *f
        while index[i] != NIL:
            f = &self.entries[index[i]]
            if f.proto == proto:
                if reply:
                    if f.backend_ip == a and f.backend_port == pa and f.client_ip == b and f.client_port == pb:
                        return index[i]
                elif f.client_ip == a and f.client_port == pa and f.vip == b and f.vport == pb:
                    return index[i]
            i = (i + 1) & self.index_mask
        return NIL

    cdef void _unindex(self, bint reply, uint32_t flow_index) noexcept nogil:
        # Linear probing with backward-shift deletion: no tombstones, probes stay short.
        cdef uint32_t *index = self.reply_index if reply else self.forward_index
        cdef Flow *f = &self.entries[flow_index]
        cdef uint64_t i = (self._reply_home(f) if reply else self._forward_home(f))
        cdef uint64_t j, home
        while index[i] != flow_index:
            if index[i] == NIL:
                return
            i = (i + 1) & self.index_mask
        j = i
        while True:
            j = (j + 1) & self.index_mask
            if index[j] == NIL:
                break
            f = &self.entries[index[j]]
            home = self._reply_home(f) if reply else self._forward_home(f)
            if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue
            index[i] = index[j]
            i = j
        index[i] = NIL

    cdef void _insert_index(self, bint reply, uint32_t flow_index) noexcept nogil:
        cdef uint32_t *index = self.reply_index if reply else self.forward_index
        cdef Flow *f = &self.entries[flow_index]
        cdef uint64_t i = self._reply_home(f) if reply else self._forward_home(f)
        while index[i] != NIL:
            i = (i + 1) & self.index_mask
        index[i] = flow_index

    cdef void _remove(self, uint32_t flow_index) noexcept nogil:
        cdef Flow *f = &self.entries[flow_index]
        self._unindex(False, flow_index)
        self._unindex(True, flow_index)
        if f.older != NIL:
            self.entries[f.older].newer = f.newer
        else:
            self.oldest = f.newer
        if f.newer != NIL:
            self.entries[f.newer].older = f.older
        else:
            self.newest = f.older
        f.newer = self.free_head
        self.free_head = flow_index
        self.count -= 1

    cdef uint32_t _expire_all(self, double now) noexcept nogil:
        cdef uint32_t index = self.oldest, next_index, removed = 0
        while index != NIL:
            next_index = self.entries[index].newer
            if self.entries[index].expires <= now:
                self._remove(index)
                removed += 1
            index = next_index
        self.expired += removed
        return removed

    cdef uint32_t _live(self, uint32_t index, double now) noexcept nogil:
        if index != NIL and self.entries[index].expires <= now:
            self._remove(index)
            self.expired += 1
            return NIL
        return index

    cdef uint32_t _add(self, Flow *new_flow, double now) noexcept nogil:
        cdef uint32_t index
        # A full table is scanned for expired flows at most once per FULL_SCAN_INTERVAL
        # (as the reference does): a scan for every new flow made a SYN flood cost O(table)
        # per packet, and the queue overflowed.
        if self.count >= self.capacity and now - self.last_full_scan >= FULL_SCAN_INTERVAL:
            self._expire_all(now)
            self.last_full_scan = now
        while self.count >= self.capacity:
            self._remove(self.oldest)
            self.evicted += 1
        index = self._find(False, new_flow.proto, new_flow.client_ip, new_flow.client_port,
                           new_flow.vip, new_flow.vport)
        if index != NIL:
            self._remove(index)
        index = self._find(True, new_flow.proto, new_flow.backend_ip, new_flow.backend_port,
                           new_flow.client_ip, new_flow.client_port)
        if index != NIL:
            self._remove(index)
        index = self.free_head
        self.free_head = self.entries[index].newer
        self.entries[index] = new_flow[0]
        self.entries[index].expires = now + self.timeouts[new_flow.state]
        self.entries[index].older = self.newest
        self.entries[index].newer = NIL
        if self.newest != NIL:
            self.entries[self.newest].newer = index
        else:
            self.oldest = index
        self.newest = index
        self.count += 1
        self._insert_index(False, index)
        self._insert_index(True, index)
        return index

    cdef inline void _observe(self, uint32_t index, int from_client, uint8_t flags, double now) noexcept nogil:
        cdef Flow *f = &self.entries[index]
        f.state = next_state(f.state, from_client, flags)
        f.expires = now + self.timeouts[f.state]

    # --- session affinity (no GIL): the reference's AffinityTable -----------------------------

    cdef inline uint64_t _affinity_home(self, Affinity *a) noexcept nogil:
        return index_hash(a.proto, a.client_ip, 0, a.vip, a.vport) & self.affinity_mask

    cdef Affinity *_affinity_find(self, uint8_t proto, uint32_t client, uint32_t vip,
                                  uint16_t vport) noexcept nogil:
        cdef uint64_t i = index_hash(proto, client, 0, vip, vport) & self.affinity_mask
        cdef Affinity *a
        while self.affinity[i].used:
            a = &self.affinity[i]
            if a.client_ip == client and a.vip == vip and a.vport == vport and a.proto == proto:
                return a
            i = (i + 1) & self.affinity_mask
        return NULL

    cdef void _affinity_remove(self, uint64_t i) noexcept nogil:
        # Backward shift: pull later entries of the probe run into the hole.
        cdef uint64_t j = i, home
        self.affinity[i].used = 0
        self.affinity_count -= 1
        while True:
            j = (j + 1) & self.affinity_mask
            if not self.affinity[j].used:
                return
            home = self._affinity_home(&self.affinity[j])
            if ((j - home) & self.affinity_mask) >= ((j - i) & self.affinity_mask):
                self.affinity[i] = self.affinity[j]
                self.affinity[j].used = 0
                i = j

    cdef uint32_t _affinity_expire(self, double now) noexcept nogil:
        cdef uint64_t i = 0
        cdef uint32_t removed = 0
        if self.affinity == NULL or self.affinity_count == 0:
            return 0
        while i <= self.affinity_mask:
            if self.affinity[i].used and self.affinity[i].expires <= now:
                self._affinity_remove(i)  # an entry may have moved into i: look again
                removed += 1
            else:
                i += 1
        return removed

    cdef void _choose(self, Frontend *f, Flow *flow, double now) noexcept nogil:
        """The backend for a new flow: the client's sticky one, else Maglev's."""
        cdef Affinity *sticky = NULL
        cdef uint64_t i
        cdef uint32_t j, value
        if f.affinity_timeout > 0:
            sticky = self._affinity_find(flow.proto, flow.client_ip, flow.vip, flow.vport)
            if sticky != NULL and sticky.expires <= now:
                self._affinity_remove(sticky - self.affinity)
                sticky = NULL
            if sticky != NULL:
                for j in range(f.backend_count):
                    if f.backend_ips[j] == sticky.backend_ip and f.backend_ports[j] == sticky.backend_port:
                        sticky.expires = now + f.affinity_timeout
                        flow.backend_ip, flow.backend_port = sticky.backend_ip, sticky.backend_port
                        self.affinity_hits += 1
                        return
        value = f.table[flow_hash(flow.proto, flow.client_ip, flow.client_port, flow.vip,
                                  flow.vport, self.flow_seed) % f.table_size]
        flow.backend_ip, flow.backend_port = f.backend_ips[value], f.backend_ports[value]
        if f.affinity_timeout <= 0:
            return
        if sticky == NULL:
            if self.affinity_count >= self.affinity_max:
                self.affinity_full += 1
                return
            i = index_hash(flow.proto, flow.client_ip, 0, flow.vip, flow.vport) & self.affinity_mask
            while self.affinity[i].used:
                i = (i + 1) & self.affinity_mask
            sticky = &self.affinity[i]
            sticky.client_ip, sticky.vip, sticky.vport = flow.client_ip, flow.vip, flow.vport
            sticky.proto, sticky.used = flow.proto, 1
            self.affinity_count += 1
        # New, or its backend left the service: the client moves on.
        sticky.backend_ip, sticky.backend_port = flow.backend_ip, flow.backend_port
        sticky.expires = now + f.affinity_timeout

    # --- one packet ------------------------------------------------------------------------

    cdef Verdict process_packet(self, uint8_t *pkt, uint32_t length, double now,
                                bint partial=False) noexcept nogil:
        """The verdict for one packet; rewrites it in place. The reference's process()."""
        cdef Verdict v
        v.action, v.reason, v.proxied, v.hairpin, v.length = ACT_DROP, R_TRUNCATED_IP, 0, 0, length
        self._decide(pkt, length, now, partial, &v)
        self.verdicts[v.action][v.reason] += 1
        return v

    cdef void _decide(self, uint8_t *pkt, uint32_t length, double now, bint partial,
                      Verdict *v) noexcept nogil:
        cdef uint32_t hl, total, l4_length, dst, src, index
        cdef uint16_t sport, dport
        cdef uint8_t proto, flags = 0
        cdef int i
        cdef bint request = False
        cdef Flow flow
        cdef uint32_t *slot
        cdef Frontend *f
        if length < 20:
            v.reason = R_TRUNCATED_IP; return
        if pkt[0] >> 4 != 4:
            v.reason = R_NOT_IPV4; return
        hl = (pkt[0] & 0x0F) * 4
        if hl < 20:
            v.reason = R_BAD_IHL; return
        if hl > length:
            v.reason = R_TRUNCATED_IP; return
        total = rd16(pkt + 2)
        if total < hl or total > length:
            v.reason = R_BAD_LENGTH; return
        v.length = total
        if rd16(pkt + 6) & 0x3FFF:
            v.reason = R_FRAGMENT; return
        proto = pkt[9]
        if proto == 1:
            self._icmp_error(pkt, hl, total, now, v)
            return
        if proto != 6 and proto != 17:
            v.reason = R_UNSUPPORTED; return
        l4_length = total - hl
        if proto == 6:
            if l4_length < 20 or (pkt[hl + 12] >> 4) * 4 < 20 or (pkt[hl + 12] >> 4) * 4 > l4_length:
                v.reason = R_TRUNCATED_L4; return
            flags = pkt[hl + 13]
        elif l4_length < 8 or not 8 <= rd16(pkt + hl + 4) <= l4_length:
            v.reason = R_TRUNCATED_L4; return
        if hl > 20:
            self.ip_options += 1
        src = rd32raw(pkt + 12)
        dst = rd32raw(pkt + 16)
        sport = rd16(pkt + hl)
        dport = rd16(pkt + hl + 2)
        for i in range(self.range_count):
            if (_ntohl(dst) & self.range_mask[i]) == self.range_net[i]:
                request = True
                break
        if request:
            index = self._live(self._find(False, proto, src, sport, dst, dport), now)
            v.reason = R_REQUEST
            if index != NIL and self.entries[index].state == S_BACKEND_GONE:
                self._remove(index)
                index = NIL
                if not (flags & TCP_SYN and not flags & TCP_ACK):
                    v.action, v.reason = ACT_REJECT, R_BACKEND_REMOVED
                    return
                # A SYN starts a new connection (a reused port, or a SYN sent again after
                # its backend left): it gets a new backend, not a reset.
            if index == NIL:
                slot = map_slot(&self.frontend_map, frontend_key(dst, proto, dport), False)
                if slot == NULL:
                    v.action = ACT_REJECT
                    v.reason = R_PORT_NOT_SERVED if map_slot(&self.vip_map, dst, False) != NULL else R_NO_SERVICE
                    return
                f = &self.frontends[slot[0]]
                if f.backend_count == 0:
                    if f.drop_when_empty:
                        v.action, v.reason = ACT_DROP, R_NO_LOCAL_ENDPOINTS
                    else:
                        v.action, v.reason = ACT_REJECT, R_NO_ENDPOINTS
                    return
                flow.proto, flow.client_ip, flow.client_port, flow.vip, flow.vport = proto, src, sport, dst, dport
                self._choose(f, &flow, now)
                flow.state = initial_state(proto, flags)
                index = self._add(&flow, now)
                v.reason = R_NEW_FLOW
            else:
                self._observe(index, True, flags, now)
            rewrite(pkt, hl, proto, self.entries[index].backend_ip, self.entries[index].backend_port,
                    True, partial)
            v.action, v.proxied = ACT_ACCEPT, 1
            v.hairpin = self.entries[index].backend_ip == self.entries[index].client_ip
            return
        index = self._live(self._find(True, proto, src, sport, dst, dport), now)
        v.reason = R_REPLY
        if index == NIL:
            slot = map_slot(&self.backend_map, backend_key(proto, src, sport), False)
            if slot == NULL or slot[0] == AMBIGUOUS:
                v.reason = R_UNKNOWN_REPLY
                return
            f = &self.frontends[slot[0]]
            flow.proto, flow.client_ip, flow.client_port, flow.vip, flow.vport = proto, dst, dport, f.vip, f.port
            flow.backend_ip, flow.backend_port = src, sport
            flow.state = S_ESTABLISHED if proto == 6 else S_UDP_REPLIED
            index = self._add(&flow, now)
            v.reason = R_REPLY_RECOVERED
        self._observe(index, False, flags, now)
        rewrite(pkt, hl, proto, self.entries[index].vip, self.entries[index].vport, False, partial)
        v.action = ACT_ACCEPT

    cdef void _icmp_error(self, uint8_t *pkt, uint32_t hl, uint32_t total, double now,
                          Verdict *v) noexcept nogil:
        """As the reference's _icmp_error and translate_icmp_error."""
        cdef uint32_t inner = hl + 8, l4, sum_at, index, dst
        cdef uint8_t inner_proto, icmp_type
        cdef int i
        cdef uint16_t old_sum, new_sum
        cdef uint8_t old_field[6]
        cdef uint8_t new_field[6]
        cdef Flow *f
        if total - hl < 8:
            v.reason = R_TRUNCATED_L4; return
        icmp_type = pkt[hl]
        if icmp_type != 3 and icmp_type != 11 and icmp_type != 12:
            v.reason = R_UNSUPPORTED; return
        if total - inner < 20 or pkt[inner] >> 4 != 4 or (pkt[inner] & 0x0F) < 5:
            v.reason = R_ICMP_BAD_INNER; return
        l4 = inner + (pkt[inner] & 0x0F) * 4
        inner_proto = pkt[inner + 9]
        if l4 + 8 > total or rd16(pkt + inner + 6) & 0x1FFF or (inner_proto != 6 and inner_proto != 17):
            v.reason = R_ICMP_BAD_INNER; return
        dst = rd32raw(pkt + 16)
        for i in range(self.range_count):
            if (_ntohl(dst) & self.range_mask[i]) == self.range_net[i]:
                v.reason = R_ICMP_UNKNOWN_FLOW; return
        index = self._live(self._find(True, inner_proto, rd32raw(pkt + inner + 16), rd16(pkt + l4 + 2),
                                      rd32raw(pkt + inner + 12), rd16(pkt + l4)), now)
        if index == NIL:
            v.reason = R_ICMP_UNKNOWN_FLOW; return
        f = &self.entries[index]
        memcpy(old_field, pkt + inner + 16, 4)
        memcpy(old_field + 4, pkt + l4 + 2, 2)
        memcpy(new_field, &f.vip, 4)
        wr16(new_field + 4, f.vport)
        sum_at = l4 + (16 if inner_proto == 6 else 6)
        if sum_at + 2 <= total:
            old_sum = rd16(pkt + sum_at)
            if inner_proto == 6 or old_sum != 0:
                new_sum = checksum_replace(old_sum, old_field, new_field, 6)
                if inner_proto == 17 and new_sum == 0:
                    new_sum = 0xFFFF
                self._icmp_patch16(pkt, hl, sum_at, new_sum)
        self._icmp_patch16(pkt, hl, inner + 10,
                           checksum_replace(rd16(pkt + inner + 10), old_field, new_field, 4))
        self._icmp_patch16(pkt, hl, inner + 16, rd16(new_field))
        self._icmp_patch16(pkt, hl, inner + 18, rd16(new_field + 2))
        self._icmp_patch16(pkt, hl, l4 + 2, f.vport)
        if rd32raw(pkt + 12) == f.backend_ip:
            memcpy(old_field, pkt + 12, 4)
            wr16(pkt + 10, checksum_replace(rd16(pkt + 10), old_field, new_field, 4))
            memcpy(pkt + 12, &f.vip, 4)
        v.action, v.reason = ACT_ACCEPT, R_ICMP_ERROR

    cdef inline void _icmp_patch16(self, uint8_t *pkt, uint32_t hl, uint32_t at,
                                   uint16_t value) noexcept nogil:
        """Writes a 16-bit field inside an ICMP message, keeping the ICMP checksum right."""
        cdef uint8_t old[2]
        cdef uint8_t new[2]
        memcpy(old, pkt + at, 2)
        wr16(new, value)
        wr16(pkt + hl + 2, checksum_replace(rd16(pkt + hl + 2), old, new, 2))
        memcpy(pkt + at, new, 2)

    # --- Python entry points (slow path) -------------------------------------------------------

    def process(self, const uint8_t[:] raw, double now, bint partial=False):
        """(action, reason, payload or None, proxied, hairpin) for one packet.

        partial: the packet's L4 checksum field holds only the pseudo-header sum, as the
        kernel reports with NFQA_SKB_CSUMNOTREADY.
        """
        cdef uint32_t length = raw.shape[0]
        cdef bytearray buf = bytearray(raw)
        cdef uint8_t *data = <uint8_t *> (<char *> buf) if length else NULL
        cdef Verdict v
        if length == 0:
            v = self.process_packet(<uint8_t *> b"", 0, now, partial)
        else:
            v = self.process_packet(data, length, now, partial)
        payload = bytes(buf[:v.length]) if v.action == ACT_ACCEPT else None
        return ACTION_NAMES[v.action], REASON_NAMES[v.reason], payload, bool(v.proxied), bool(v.hairpin)

    def expire(self, double now):
        """Drops expired flows (returned: how many) and expired client affinities."""
        self._affinity_expire(now)
        return self._expire_all(now)

    @property
    def affinity_clients(self):
        return self.affinity_count

    @property
    def affinity_limit(self):
        return self.affinity_max

    def __len__(self):
        return self.count

    def counters(self):
        """Non-zero counters, named as the reference names them."""
        cdef int a, r
        named = {}
        for a in range(ACT_COUNT):
            for r in range(R_COUNT):
                if self.verdicts[a][r]:
                    named[f"{ACTION_NAMES[a]}_{REASON_NAMES[r]}"] = self.verdicts[a][r]
        if self.ip_options:
            named["ip_options"] = self.ip_options
        if self.udp_resteered:
            named["udp_flow_resteered"] = self.udp_resteered
        if self.tcp_retired:
            named["tcp_flow_retired"] = self.tcp_retired
        if self.affinity_hits:
            named["affinity_hit"] = self.affinity_hits
        if self.affinity_full:
            named["affinity_table_full"] = self.affinity_full
        return named

    def flows(self):
        """Every flow, oldest first: (proto, client ip, client port, vip, vport, backend ip,
        backend port, state name, expires), addresses packed."""
        cdef uint32_t index = self.oldest
        cdef Flow *f
        out = []
        while index != NIL:
            f = &self.entries[index]
            out.append((f.proto, (<char *> &f.client_ip)[:4], f.client_port, (<char *> &f.vip)[:4],
                        f.vport, (<char *> &f.backend_ip)[:4], f.backend_port, STATE_NAMES[f.state],
                        f.expires))
            index = f.newer
        return out

    def state_counts(self):
        """{"tcp/established": n, ...} over every flow, without a Python object per flow."""
        cdef uint64_t counts[2][S_COUNT]
        cdef uint32_t index = self.oldest
        memset(counts, 0, sizeof(counts))
        while index != NIL:
            counts[0 if self.entries[index].proto == 6 else 1][self.entries[index].state] += 1
            index = self.entries[index].newer
        return {f"{'tcp' if p == 0 else 'udp'}/{STATE_NAMES[st]}": counts[p][st]
                for p in range(2) for st in range(S_COUNT) if counts[p][st]}

    @staticmethod
    def bytes_per_flow():
        """What one tracked flow costs: its entry plus two index slots at load factor 0.5."""
        return sizeof(Flow) + 2 * 2 * sizeof(uint32_t)


cdef inline uint32_t _ntohl(uint32_t raw) noexcept nogil:
    cdef const uint8_t *p = <const uint8_t *> &raw
    return (<uint32_t> p[0] << 24) | (<uint32_t> p[1] << 16) | (<uint32_t> p[2] << 8) | p[3]


# --- the queue loop: NFQUEUE over raw netlink, batched both ways, without the GIL -----------

DEF BATCH = 32                   # messages per recvmmsg
DEF DRAIN_BATCHES = 16           # batches per event-loop wake-up: about 2 ms of packets
DEF RX_SLOT = 69632              # one GSO packet (up to 64 KiB) plus netlink framing
DEF TX_BUFFER = 4 * 1024 * 1024  # verdicts of a batch, payloads included, in one sendmsg
DEF SOCKET_BUFFER = 16 * 1024 * 1024

QUEUE_STAT_NAMES = ("packets", "batches", "bad_message", "no_payload", "partial_checksum",
                    "socket_overrun", "send_error", "verdict_refused", "last_refusal_errno")


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # the clock of Python's time.monotonic()
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class FastQueue:
    """Binds one NFQUEUE queue with NFQA_CFG_F_GSO and gives FastCore's verdicts in batches."""

    cdef int fd
    cdef uint32_t queue_num, max_len
    cdef uint32_t mark_proxied, mark_reject, mark_hairpin
    cdef bint fail_open
    cdef FastCore core
    cdef char *rx
    cdef char *tx
    cdef size_t tx_length
    cdef mmsghdr messages[BATCH]
    cdef iovec vectors[BATCH]
    cdef uint64_t counts[9]

    def __cinit__(self, FastCore core, uint32_t queue_num, uint32_t max_len,
                  uint32_t mark_proxied, uint32_t mark_reject, uint32_t mark_hairpin,
                  bint fail_open=False):
        self.fd = -1
        self.fail_open = fail_open
        self.core = core
        self.queue_num, self.max_len = queue_num, max_len
        self.mark_proxied, self.mark_reject, self.mark_hairpin = mark_proxied, mark_reject, mark_hairpin
        self.rx = <char *> malloc(BATCH * RX_SLOT)
        self.tx = <char *> malloc(TX_BUFFER)
        if self.rx == NULL or self.tx == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        free(self.rx)
        free(self.tx)

    @property
    def fileno(self):
        return self.fd

    def stats(self):
        return {name: self.counts[i] for i, name in enumerate(QUEUE_STAT_NAMES)}

    def open(self):
        cdef sockaddr_nl address
        cdef int size = SOCKET_BUFFER
        cdef char buf[512]
        cdef nlmsghdr *nlh
        # FAIL_OPEN: a full queue accepts packets unseen instead of dropping them
        # (docs/design.md weighs this; off unless asked for).
        cdef uint32_t flags = NFQA_CFG_F_GSO | (NFQA_CFG_F_FAIL_OPEN if self.fail_open else 0)
        memset(&address, 0, sizeof(address))
        address.nl_family = AF_NETLINK
        self.fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_NETFILTER)
        if self.fd < 0 or bind(self.fd, <sockaddr *> &address, sizeof(address)) < 0:
            raise OSError(errno, f"cannot open a netfilter netlink socket: {strerror(errno).decode()}")
        # Forced sizes need CAP_NET_ADMIN, which binding a queue needs anyway.
        setsockopt(self.fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size))
        setsockopt(self.fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size))
        try:
            nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, self.queue_num)
            nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND)
            self._blocking_request(nlh)
            nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, self.queue_num)
            nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xFFFF)
            nfq_nlmsg_cfg_put_qmaxlen(nlh, self.max_len)
            # F_GSO: the kernel hands over GSO packets whole instead of segmenting them
            # first; the single biggest cost of NFQUEUE (about 10x here).
            mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags))
            mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN))
            self._blocking_request(nlh)
        except OSError as exc:
            close(self.fd)
            self.fd = -1
            raise OSError(exc.errno, f"cannot bind NFQUEUE {self.queue_num}: {exc.strerror} "
                          "(is another process bound to it? Does this process have CAP_NET_ADMIN?)")

    cdef _blocking_request(self, nlmsghdr *nlh):
        # The socket is non-blocking for the packet loop; acknowledgements come at once,
        # but wait for them politely.
        import select
        nlh.nlmsg_flags |= NLM_F_ACK
        if send(self.fd, nlh, nlh.nlmsg_len, 0) < 0:
            raise OSError(errno, strerror(errno).decode())
        cdef char answer[8192]
        cdef ssize_t got
        cdef nlmsgerr *error
        while True:
            readable, _, _ = select.select([self.fd], [], [], 5.0)
            if not readable:
                raise OSError(110, "no acknowledgement from the kernel within 5 s")  # ETIMEDOUT
            got = recv(self.fd, answer, sizeof(answer), MSG_DONTWAIT)
            if got < 0:
                if errno == EINTR or errno == EAGAIN:
                    continue
                raise OSError(errno, strerror(errno).decode())
            if (<nlmsghdr *> answer).nlmsg_type == NLMSG_ERROR:
                error = <nlmsgerr *> mnl_nlmsg_get_payload(<nlmsghdr *> answer)
                if error.error != 0:
                    raise OSError(-error.error, strerror(-error.error).decode())
                return

    def close(self):
        cdef char buf[512]
        cdef nlmsghdr *nlh
        if self.fd < 0:
            return
        nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, self.queue_num)
        nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_UNBIND)
        send(self.fd, nlh, nlh.nlmsg_len, 0)
        close(self.fd)  # closing the socket unbinds in any case
        self.fd = -1

    def drain(self):
        """Handles the packets waiting, in batches, without the GIL. Returns how many.

        At most DRAIN_BATCHES batches per call: under a packet flood the socket never runs
        dry, and the event loop must still get its turn for syncs, health and status. The
        socket stays readable, so the loop calls again at once."""
        cdef int got, batches = 0
        cdef uint64_t before = self.counts[0]
        if self.fd < 0:
            return 0
        with nogil:
            while batches < DRAIN_BATCHES:
                got = self._batch()
                if got <= 0:
                    break
                batches += 1
        return self.counts[0] - before

    cdef void _flush(self) noexcept nogil:
        if self.tx_length and send(self.fd, self.tx, self.tx_length, 0) < 0:
            self.counts[6] += 1
        self.tx_length = 0

    cdef int _batch(self) noexcept nogil:
        cdef int i, got, remaining
        cdef nlmsghdr *nlh
        cdef double now
        for i in range(BATCH):
            self.vectors[i].iov_base = self.rx + i * RX_SLOT
            self.vectors[i].iov_len = RX_SLOT
            memset(&self.messages[i].msg_hdr, 0, sizeof(msghdr))
            self.messages[i].msg_hdr.msg_iov = &self.vectors[i]
            self.messages[i].msg_hdr.msg_iovlen = 1
        got = recvmmsg(self.fd, self.messages, BATCH, MSG_DONTWAIT, NULL)
        if got < 0:
            if errno == ENOBUFS:  # the kernel dropped messages for us: count, carry on
                self.counts[5] += 1
                return 1
            return 1 if errno == EINTR else 0
        self.counts[1] += 1
        now = monotonic()
        for i in range(got):
            nlh = <nlmsghdr *> (self.rx + i * RX_SLOT)
            remaining = self.messages[i].msg_len
            while mnl_nlmsg_ok(nlh, remaining):
                self._packet(nlh, now)
                if self.tx_length > TX_BUFFER - RX_SLOT - 1024:
                    self._flush()
                nlh = mnl_nlmsg_next(nlh, &remaining)
        self._flush()
        return got

    cdef void _packet(self, nlmsghdr *nlh, double now) noexcept nogil:
        cdef nlattr *attrs[NFQA_MAX + 1]
        cdef nfqnl_msg_packet_hdr *header
        cdef uint32_t packet_id, mark = 0, length
        cdef uint8_t *data
        cdef bint partial = False
        cdef Verdict v
        cdef nlmsghdr *out
        if nlh.nlmsg_type == NLMSG_ERROR:
            # The kernel refused a verdict (an unknown id, a malformed message): count it.
            if (<nlmsgerr *> mnl_nlmsg_get_payload(nlh)).error != 0:
                self.counts[7] += 1
                self.counts[8] = -(<nlmsgerr *> mnl_nlmsg_get_payload(nlh)).error
            return
        if nlh.nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | 0):  # NFQNL_MSG_PACKET
            return
        memset(attrs, 0, sizeof(attrs))
        if nfq_nlmsg_parse(nlh, attrs) < 0 or attrs[NFQA_PACKET_HDR] == NULL:
            self.counts[2] += 1  # without an id there is no verdict to give
            return
        header = <nfqnl_msg_packet_hdr *> mnl_attr_get_payload(attrs[NFQA_PACKET_HDR])
        packet_id = ntohl(header.packet_id)
        if attrs[NFQA_MARK] != NULL:
            mark = ntohl(mnl_attr_get_u32(attrs[NFQA_MARK]))
        out = nfq_nlmsg_put(self.tx + self.tx_length, NFQNL_MSG_VERDICT, self.queue_num)
        self.counts[0] += 1
        if attrs[NFQA_PAYLOAD] == NULL:
            self.counts[3] += 1
            nfq_nlmsg_verdict_put(out, packet_id, NF_DROP)
            self.tx_length += out.nlmsg_len
            return
        if attrs[NFQA_SKB_INFO] != NULL and ntohl(mnl_attr_get_u32(attrs[NFQA_SKB_INFO])) & NFQA_SKB_CSUMNOTREADY:
            partial = True
            self.counts[4] += 1
        data = <uint8_t *> mnl_attr_get_payload(attrs[NFQA_PAYLOAD])
        length = mnl_attr_get_payload_len(attrs[NFQA_PAYLOAD])
        v = self.core.process_packet(data, length, now, partial)
        if v.action == ACT_DROP:
            nfq_nlmsg_verdict_put(out, packet_id, NF_DROP)
        elif v.action == ACT_REJECT:
            nfq_nlmsg_verdict_put(out, packet_id, NF_ACCEPT)
            nfq_nlmsg_verdict_put_mark(out, mark | self.mark_reject)  # the helper converts to network order
        else:
            nfq_nlmsg_verdict_put(out, packet_id, NF_ACCEPT)
            if v.proxied:
                mark |= self.mark_proxied | (self.mark_hairpin if v.hairpin else 0)
                nfq_nlmsg_verdict_put_mark(out, mark)
            nfq_nlmsg_verdict_put_pkt(out, data, v.length)
        self.tx_length += out.nlmsg_len
