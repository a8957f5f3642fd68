"""Every default a user can change, in one place: the CLI, ProxyConfig and the data paths
take them from here, and tests/unit/test_defaults.py checks that the README and
docs/design.md say the same (the flow timeouts, fixed, are in datapath/flows.py)."""

from __future__ import annotations

from ipaddress import IPv4Network

SERVICE_CIDRS = (IPv4Network("10.96.0.0/12"),)  # kubeadm's default service range
QUEUE_NUM = 100
# The packet mark bits nfqproxy may use (datapath/marks.py): clear of kube-proxy's
# 0x4000/0x8000 and Cilium's 0x0f00.
MARK_MASK = 0xFFFF00FF
# Flows tracked: 1M at 56 bytes each on the fast path is 56 MiB, allocated once.
FLOW_CAPACITY = 1 << 20
MIN_SYNC_PERIOD = 1.0  # seconds; kube-proxy's --min-sync-period default
SYNC_PERIOD = 30.0  # seconds; kube-proxy's --sync-period default
HEALTHZ_BIND = ("0.0.0.0", 10256)  # kube-proxy's healthz port
METRICS_BIND = ("127.0.0.1", 10249)  # kube-proxy's metrics port, not beyond the node
IPTABLES = "auto"  # the host's back end, legacy or nft (iptables_backend.py)
# --nodeport-addresses: kube-proxy's nftables mode default, the node's primary address only
# (node_addresses.py says why).
NODEPORT_ADDRESSES = ("primary",)
SEED = 0  # Maglev and flow-hash seed: every node must use the same one
MANIFEST_POLL_INTERVAL = 0.2  # seconds between checks of a manifest folder
# Seconds a watch asks the API server to hold it open, a random value in this range, below
# the client's 300 s request limit.
WATCH_TIMEOUT = (240, 290)


def bind_text(bind: tuple[str, int]) -> str:
    return f"{bind[0]}:{bind[1]}"
