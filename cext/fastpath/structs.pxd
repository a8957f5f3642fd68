# The fast path's state, as C structs: the tables, and Core, which holds them all and which
# FastCore wraps for Python. The per-packet functions take a Core (or one of its tables) by
# pointer, without the GIL.
#
# Addresses are one 16-byte Addr in both families, IPv4 mapped into IPv6 (::ffff:a.b.c.d),
# everywhere but in the connection table, whose size is per flow. There an IPv4 flow keeps
# its three 4-byte addresses in its 40-byte entry, and an IPv6 flow keeps 32-bit folds of
# its addresses there (to find it) and the addresses whole in a second array at the same
# index, allocated with the first IPv6 frontend: a table per family in effect, and IPv4
# flows cost what they did.
#
# Connection table: a fixed array of 40-byte Flow entries on a FIFO list (oldest first, for
# eviction), and two open-addressing indexes (client side and backend side) of uint32 slots
# at load factor <= 0.5: at most 40 + 2 * 2 * 4 = 56 bytes per IPv4 flow, allocated once;
# 56 + 48 = 104 per IPv6 flow.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastpath.constants cimport ACT_COUNT, E_COUNT, MAX_RANGES, R_COUNT, REFUSE_COUNT, S_COUNT
from includes.threads cimport pthread_mutex_t


cdef struct Addr:         # the 16 bytes of an IPv6 address, or of an IPv4-mapped one
    uint64_t hi           # bytes 0-7 as they sit in memory
    uint64_t lo           # bytes 8-15


cdef struct Flow:
    uint32_t client_ip    # IPv4: as it sits in the packet; IPv6: a fold (wide holds it whole)
    uint32_t vip
    uint32_t backend_ip
    uint16_t client_port  # ports in host order
    uint16_t vport
    uint16_t backend_port
    uint8_t proto
    uint8_t state
    uint8_t bits          # FLOW_MASQUERADE (decided with the flow: every new connection on
                          # its 5-tuple gets it), FLOW_V6
    uint8_t created_high  # when it was added, whole seconds of the clock, modulo 2^24 (194
    uint16_t created_low  # days): in what was padding, so the entry stays 40 bytes
    uint32_t older        # FIFO links: insertion order, for eviction when full
    uint32_t newer
    double expires


cdef struct WideAddrs:    # an IPv6 flow's addresses, at its index in FlowTable.wide
    Addr client_ip
    Addr vip
    Addr backend_ip


cdef struct FlowSpec:     # a flow being made, of either family, before it is in the table
    Addr client_ip
    Addr vip
    Addr backend_ip
    uint16_t client_port
    uint16_t vport
    uint16_t backend_port
    uint8_t proto
    uint8_t state
    uint8_t masquerade
    uint8_t version


cdef struct Frontend:
    Addr vip
    uint16_t port
    uint16_t proto           # with VARIANT_CLUSTER (0x100) for a Local service's second table
    uint8_t used
    uint32_t backend_count   # chosen: in the Maglev table
    uint32_t present_count   # chosen, then draining ones: still part of the service
    Addr *backend_ips
    uint16_t *backend_ports
    uint32_t *backend_marks  # the offload path's mark for each backend (0 on the fast path)
    uint64_t *decided        # new flows sent to each backend since it was installed
    uint64_t refused[REFUSE_COUNT]  # new flows refused, by REFUSE_*, since it was installed
    uint16_t *table
    uint32_t table_size
    double affinity_timeout  # sessionAffinity ClientIP seconds; 0: none
    uint8_t drop_when_empty  # no backends by internalTrafficPolicy Local: drop, not reject
    uint8_t policy           # POLICY_*: which sources take the variant, which are masqueraded


cdef struct Affinity:         # one client's sticky backend for one service port
    Addr client_ip
    Addr vip
    Addr backend_ip
    uint16_t vport
    uint16_t backend_port
    uint8_t proto
    uint8_t used
    double expires


cdef struct Verdict:
    int action
    int reason
    int proxied
    int masquerade  # the kernel masquerades the flow: hairpin, or by policy
    uint32_t length       # bytes of the (rewritten) packet to hand back
    uint32_t mark         # the offload path: the chosen backend's mark, for the DNAT map


cdef struct Headers:      # what parsing found in a TCP, UDP or SCTP packet
    uint8_t version       # 4 or 6
    uint32_t hl           # offset of the upper-layer header (IPv6: past its extensions)
    uint32_t total        # IP total length (IPv6: 40 + payload length)
    uint32_t extensions   # IPv6 extension headers walked
    bint first_fragment   # IPv6: offset 0 with more to come, decided by its ports
    bint later_fragment   # IPv6: a non-zero offset, no upper-layer header
    uint8_t proto
    uint8_t flags         # TCP flags; 0 for UDP and SCTP
    Addr src
    Addr dst
    uint16_t sport        # ports in host order
    uint16_t dport


cdef struct MapKey:
    Addr address
    uint32_t extra        # (protocol << 16 | port), or 0 for an address alone
    uint32_t used


cdef struct AddrMap:      # open addressing (Addr, extra) -> uint32, rebuilt whole on changes
    MapKey *keys
    uint32_t *values
    uint64_t mask


cdef struct FlowTable:
    Flow *entries
    WideAddrs *wide        # IPv6 flows' addresses by flow index; NULL until an IPv6 frontend
    uint32_t capacity
    uint32_t count
    uint32_t free_head     # the free list threads through Flow.newer
    uint32_t oldest
    uint32_t newest
    uint32_t *forward_index  # client side: (proto, client, VIP)
    uint32_t *reply_index    # backend side: (proto, backend, client)
    uint64_t index_mask
    double timeouts[S_COUNT]
    double full_scan_interval
    double last_full_scan  # when a full table was last scanned for expired flows
    uint64_t evicted
    uint64_t expired


cdef struct ServiceTable:
    Frontend *frontends    # by slot, as FastDatapath assigns them
    uint32_t slots
    AddrMap frontend_map   # (VIP, proto, port) -> slot
    AddrMap vip_map        # VIP -> 1: tells "no such port" from "no such service"
    AddrMap backend_map    # (proto, backend) -> slot, or AMBIGUOUS: to recover replies
    Addr range_net[MAX_RANGES]  # the service CIDRs (IPv4 ones mapped: /96 + prefix)
    Addr range_mask[MAX_RANGES]
    int range_count


cdef struct AffinityTable:  # open addressing, backward-shift deletion
    Affinity *entries       # allocated on first use
    uint64_t mask
    uint32_t limit
    uint32_t count


cdef struct TraceEvent:     # one decision, for `nfqproxy trace`
    double time            # monotonic seconds, as the queue loop's clock
    Addr src               # the packet's addresses and ports (when has_tuple)
    Addr dst
    Addr backend           # a new flow's backend
    uint16_t sport
    uint16_t dport
    uint16_t backend_port
    uint8_t proto
    uint8_t version
    uint8_t action
    uint8_t reason
    uint8_t has_tuple      # 0: the packet was refused before its ports were read


cdef struct TraceRing:      # decisions for whoever traces; events NULL when nobody does
    TraceEvent *events
    uint32_t size          # a power of two
    uint64_t written       # events recorded, ever (the next one's place: written % size)
    uint64_t taken         # events Python has read
    uint64_t lost          # events not recorded because Python had not read the ring


cdef struct Core:
    # Held by a queue worker while it decides a batch and by Python while it reads or
    # reprograms the tables (recursive: Python holds it across a whole sync).
    pthread_mutex_t lock
    FlowTable flows
    ServiceTable services
    AffinityTable affinity
    uint64_t flow_seed     # the configured seed ^ hashing.SEED_FLOW
    uint64_t verdicts[ACT_COUNT][R_COUNT]
    uint64_t events[E_COUNT]
    TraceRing trace
