"""How a verdict reaches the kernel: the packet mark bits.

The hooks (nfqproxy.hooks) match these bits, and every queue binding sets them; they are
clear of kube-proxy's 0x4000/0x8000 and Cilium's 0x0f00 ranges.
"""

from __future__ import annotations

MARK_PROXIED = 0x00100000  # a DNATed request: its conntrack entry is marked, replies queued
MARK_REJECT = 0x00200000  # the filter table's REJECT rule answers the packet
MARK_HAIRPIN = 0x00400000  # client and backend are one host: masquerade
