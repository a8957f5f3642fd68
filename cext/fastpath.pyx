# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The fast data path's core in C: parse, look up, rewrite, verdict, with no Python per packet.

It implements exactly the semantics of nfqproxy.datapath.reference.datapath; the differential tests
feed both the same packets and require identical verdicts, bytes and counters. Python is
only involved when tables change (set_frontend / rebuild_maps) and for status snapshots.

This file is the module (nfqproxy._fastpath): its name tables, and its parts by role, which
it includes in dependency order. fastpath/*.pxd declare (the enums and structs, cimported);
fastpath/*.pxi define (included: one compilation unit, so that the per-packet functions are
inlined across parts and FastCore and FastQueue see each other's C attributes). cext/README.md
lists the parts.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset, strerror

from includes cimport hashing
from includes.hashing cimport mix64
from includes.netlink cimport *
from includes.threads cimport *
from fastpath.constants cimport *
from fastpath.structs cimport *

from nfqproxy.datapath import frontends as _frontends, marks as _marks
from nfqproxy.datapath.flows import FULL_SCAN_INTERVAL, affinity_capacity
from nfqproxy.datapath.hashing import SEED_FLOW

# --- the name tables: each in the order of its enum in fastpath/constants.pxd ---------------
# tests/unit/test_datapath_contract.py checks them against the contract (verdicts, flows).

ACTION_NAMES = ("accept", "drop", "reject")
REASON_NAMES = (
    "request", "new_flow", "reply", "reply_recovered", "unknown_reply", "no_service",
    "port_not_served", "no_endpoints", "truncated_ip_header", "bad_ihl", "bad_total_length",
    "not_ip", "fragment", "truncated_l4_header", "unsupported_protocol", "backend_removed",
    "icmp_error", "icmp_unknown_flow", "icmp_bad_inner_header", "no_local_endpoints",
    "internal_error", "bad_extension_headers",
)
STATE_NAMES = ("syn_sent", "established", "closing", "reset", "unreplied", "replied",
               "backend_gone")
EVENT_COUNTER_NAMES = ("ip_options", "udp_flow_resteered", "tcp_flow_retired", "affinity_hit",
                       "affinity_table_full")
REFUSAL_NAMES = ("no_endpoints", "no_local_endpoints", "backend_removed")  # reasons, REFUSE_*
QUEUE_STAT_NAMES = ("packets", "batches", "bad_message", "no_payload", "partial_checksum",
                    "socket_overrun", "send_error", "verdict_refused", "last_refusal_errno")


cdef _check_table(str name, tuple names, int count):
    # A table one entry short of its enum would name counters wrongly, or fail on the first
    # packet with the reason left out: refuse to load instead.
    if len(names) != count:
        raise ImportError(f"nfqproxy._fastpath: {name} has {len(names)} names for {count} values")


_check_table("ACTION_NAMES", ACTION_NAMES, ACT_COUNT)
_check_table("REASON_NAMES", REASON_NAMES, R_COUNT)
_check_table("STATE_NAMES", STATE_NAMES, S_COUNT)
_check_table("EVENT_COUNTER_NAMES", EVENT_COUNTER_NAMES, E_COUNT)
_check_table("QUEUE_STAT_NAMES", QUEUE_STAT_NAMES, Q_COUNT)
_check_table("REFUSAL_NAMES", REFUSAL_NAMES, REFUSE_COUNT)

# The numbers the Python side programs and hands over must mean the same here.
for _name, _c_value, _py_value in (
    ("POLICY_INTERNAL", POLICY_INTERNAL, _frontends.INTERNAL),
    ("POLICY_EXTERNAL_CLUSTER", POLICY_EXTERNAL_CLUSTER, _frontends.EXTERNAL_CLUSTER),
    ("POLICY_EXTERNAL_LOCAL", POLICY_EXTERNAL_LOCAL, _frontends.EXTERNAL_LOCAL),
    ("SOURCE_POD", SOURCE_POD, _marks.SOURCE_POD),
    ("SOURCE_OFF_CLUSTER", SOURCE_OFF_CLUSTER, _marks.SOURCE_OFF_CLUSTER),
    ("SOURCE_NODE", SOURCE_NODE, _marks.SOURCE_NODE),
    ("VARIANT_CLUSTER", VARIANT_CLUSTER, _frontends.VARIANT_CLUSTER),
):
    if _c_value != _py_value:
        raise ImportError(f"nfqproxy._fastpath: {_name} is {_c_value} in C, {_py_value} in Python")

# --- the parts, by role -------------------------------------------------------------------

include "fastpath/packet.pxi"
include "fastpath/checksum.pxi"
include "fastpath/nat.pxi"
include "fastpath/maps.pxi"
include "fastpath/flowtable.pxi"
include "fastpath/services.pxi"
include "fastpath/affinity.pxi"
include "fastpath/icmp.pxi"
include "fastpath/trace.pxi"
include "fastpath/decide.pxi"
include "fastpath/status.pxi"
include "fastpath/core.pxi"
include "fastpath/queue.pxi"

crc32c_init()

# --- the hash, for the contract tests -------------------------------------------------------


def hash64(bytes data, uint64_t seed):
    """hashing.hash64 as the C of includes/hashing.pxd computes it."""
    return hashing.hash64(<const uint8_t *> <const char *> data, len(data), seed)


def flow_hash(uint8_t proto, bytes src, uint16_t sport, bytes dst, uint16_t dport, uint64_t seed):
    """hashing.flow_hash as the C of includes/hashing.pxd computes it, seeded as FastCore
    seeds it (seed ^ SEED_FLOW); src and dst are packed addresses of one family."""
    if len(src) not in (4, 16) or len(dst) != len(src):
        raise ValueError("src and dst: 4 or 16 bytes each, one family")
    return hashing.flow_hash(proto, <const uint8_t *> <const char *> src, sport,
                             <const uint8_t *> <const char *> dst, dport, len(src),
                             seed ^ SEED_FLOW)
