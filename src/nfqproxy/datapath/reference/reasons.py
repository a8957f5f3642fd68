"""Why a packet cannot be proxied: the values are the names of drop counters
(datapath/verdicts.py lists them for every data path)."""

from __future__ import annotations


class Reason:
    TRUNCATED_IP = "truncated_ip_header"
    BAD_IHL = "bad_ihl"
    BAD_LENGTH = "bad_total_length"
    NOT_IP = "not_ip"  # neither IPv4 nor IPv6, or IPv6 with an IPv4-mapped address
    FRAGMENT = "fragment"
    TRUNCATED_L4 = "truncated_l4_header"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    ICMP_BAD_INNER = "icmp_bad_inner_header"
    # More IPv6 extension headers than ipv6.MAX_EXTENSION_HEADERS, or one cut short.
    EXTENSION_HEADERS = "bad_extension_headers"
