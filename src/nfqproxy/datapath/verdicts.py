"""What a data path answers for a packet: an action, a reason, and the counters they name.

This is the contract every data path implements. The fast path's C enums follow the
orders defined here, and tests/unit/test_datapath_contract.py checks that its names match
these exactly, so a reason added here and not in C (or the reverse) fails a test instead
of mislabelling counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    """In the order of the fast path's ACT_* enum."""

    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"


# Every reason a verdict can give, in the order of the fast path's R_* enum. The counter of
# a verdict is named f"{action}_{reason}" (see verdict_counter) on every data path.
REASONS: tuple[str, ...] = (
    "request",  # a packet of a known flow, client to service
    "new_flow",  # the first packet of a flow: a backend was chosen
    "reply",  # a backend's answer of a known flow, un-NATed
    "reply_recovered",  # a reply after a restart: the flow rebuilt from the backend index
    "unknown_reply",  # a marked reply whose flow cannot be rebuilt
    "no_service",  # no service has this VIP
    "port_not_served",  # the VIP's service has no such port and protocol
    "no_endpoints",  # the service port has no usable endpoint anywhere
    "truncated_ip_header",
    "bad_ihl",
    "bad_total_length",
    "not_ip",  # neither IPv4 nor IPv6, or IPv6 with an IPv4-mapped address
    "fragment",
    "truncated_l4_header",
    "unsupported_protocol",
    "backend_removed",  # a packet of a TCP flow whose backend left the service
    "icmp_error",  # an ICMP error about a proxied flow, translated for the client
    "icmp_unknown_flow",
    "icmp_bad_inner_header",
    "no_local_endpoints",  # internalTrafficPolicy Local: endpoints only on other nodes
    "internal_error",  # a bug: the reference path caught an exception for this packet
    "bad_extension_headers",  # IPv6: more than ipv6.MAX_EXTENSION_HEADERS, or one cut short
)

# Counters beside the verdict counters, named alike on every data path.
EVENT_COUNTERS: tuple[str, ...] = (
    "ip_options",  # packets with IP options (served; counted because they are rare)
    "udp_flow_resteered",  # UDP flows moved on because their backend stopped being chosen
    "tcp_flow_retired",  # TCP flows marked because their backend left the service
    "affinity_hit",  # new flows sent to the client's sticky backend
    "affinity_table_full",  # clients not remembered for sessionAffinity: table full
)


def verdict_counter(action: Action, reason: str) -> str:
    return f"{action.value}_{reason}"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: str  # one of REASONS
    payload: bytes | None = None  # the rewritten packet, for ACCEPT
    proxied: bool = False  # a request that was DNATed: its conntrack entry gets marked
    # The kernel must masquerade the flow: a hairpin (client and backend are one host), or
    # a source the service's policy masquerades (datapath/frontends.py routing()).
    masquerade: bool = False
