# The fast path's constants. The ACT_*, R_*, S_* and E_* enums follow the orders of the
# data-path contract (nfqproxy.datapath.verdicts and flows), so that a verdict counted in C
# is named as every data path names it; fastpath.pyx holds a name table for each enum in the
# same order, refuses to load if a table's length differs from its enum's, and
# tests/unit/test_datapath_contract.py checks the names against the contract's.
#
# Anonymous enums: Cython 3 does not take a named enum's values as array indexes.
from libc.stdint cimport uint32_t, uint64_t


cdef enum:  # actions: verdicts.Action, ACTION_NAMES
    ACT_ACCEPT = 0
    ACT_DROP
    ACT_REJECT
    ACT_COUNT

cdef enum:  # reasons: verdicts.REASONS, REASON_NAMES
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
    # Only the reference path gives it (for an exception it caught); C never does, but the
    # enum keeps it so that the reasons match the contract's one for one.
    R_INTERNAL_ERROR
    R_BAD_EXTENSION_HEADERS  # IPv6: too many, or running past the packet
    R_COUNT

cdef enum:  # flow states: flows.FlowState, STATE_NAMES; timeouts in Timeouts.in_state_order()
    S_SYN_SENT = 0
    S_ESTABLISHED
    S_CLOSING
    S_RESET
    S_UDP_UNREPLIED
    S_UDP_REPLIED
    S_BACKEND_GONE  # its backend left the service: the next request gets a reset
    S_COUNT

cdef enum:  # event counters: verdicts.EVENT_COUNTERS, EVENT_COUNTER_NAMES
    E_IP_OPTIONS = 0
    E_UDP_FLOW_RESTEERED
    E_TCP_FLOW_RETIRED
    E_AFFINITY_HIT
    E_AFFINITY_TABLE_FULL
    E_COUNT

cdef enum:  # a frontend's refused new flows (Frontend.refused): REFUSAL_NAMES
    REFUSE_NO_ENDPOINTS = 0     # reject: no endpoint anywhere
    REFUSE_NO_LOCAL_ENDPOINTS   # drop: internalTrafficPolicy Local, none on this node
    REFUSE_BACKEND_REMOVED      # reset: a packet of a TCP flow whose backend left (offload:
                                # or whose conntrack entry is gone for any reason)
    REFUSE_COUNT

cdef enum:  # the queue loop's statistics: QUEUE_STAT_NAMES
    Q_PACKETS = 0
    Q_BATCHES
    Q_BAD_MESSAGE         # a packet message without an id: no verdict can be given
    Q_NO_PAYLOAD
    Q_PARTIAL_CHECKSUM    # packets with NFQA_SKB_CSUMNOTREADY
    Q_SOCKET_OVERRUN      # ENOBUFS: the kernel dropped messages for us
    Q_SEND_ERROR
    Q_VERDICT_REFUSED     # the kernel answered a verdict with an error
    Q_LAST_REFUSAL_ERRNO  # a value, not a count: that error
    Q_COUNT

cdef enum:  # TCP flags: as flows.TCP_*
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_ACK = 0x10

cdef enum:  # IP protocol numbers, and IPv6's extension headers (reference/ipv6.py)
    PROTO_ICMP = 1
    PROTO_TCP = 6
    PROTO_UDP = 17
    PROTO_ICMPV6 = 58
    PROTO_SCTP = 132
    EXT_HOP_BY_HOP = 0
    EXT_ROUTING = 43
    EXT_FRAGMENT = 44
    EXT_AUTHENTICATION = 51
    EXT_DESTINATION_OPTIONS = 60
    MAX_EXTENSION_HEADERS = 8  # reference/ipv6.py: a longer chain is refused

cdef enum:
    MAX_RANGES = 16  # service CIDRs

cdef enum:  # Flow.bits, and Flow's creation time
    FLOW_MASQUERADE = 1
    FLOW_V6 = 2
    CREATED_MASK = 0xFFFFFF  # 24 bits of seconds

cdef enum:  # as nfqproxy.datapath.frontends and marks name them (checked when loaded)
    POLICY_INTERNAL = 0          # a ClusterIP: sources off the cluster masqueraded
    POLICY_EXTERNAL_CLUSTER = 1  # every source masqueraded
    POLICY_EXTERNAL_LOCAL = 2    # pods and the node take the cluster variant
    SOURCE_POD = 1               # the mark's source bits, as the queue hands them over
    SOURCE_OFF_CLUSTER = 2
    SOURCE_NODE = 4
    VARIANT_CLUSTER = 0x100      # in a frontend key's protocol: the cluster variant

# Sentinels that do not fit an enum (a C int): typed compile-time constants.
cdef extern from *:
    """
    #define NFQP_NIL ((uint32_t) 0xFFFFFFFFu)
    #define NFQP_AMBIGUOUS ((uint32_t) 0xFFFFFFFEu)
    #define NFQP_EMPTY_KEY ((uint64_t) 0xFFFFFFFFFFFFFFFFull)
    """
    const uint32_t NIL "NFQP_NIL"              # no flow: an empty index slot, the end of a list
    const uint32_t AMBIGUOUS "NFQP_AMBIGUOUS"  # a backend of several frontends: no recovery
    const uint64_t EMPTY_KEY "NFQP_EMPTY_KEY"  # an empty slot of a U64Map
