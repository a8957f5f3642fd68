"""The lab's IPv6 half (`nfqproxy lab up --dual-stack`): an IPv6 address beside each IPv4 one
on every link, the same routes, and a dual-stack twin of each lab Service.

    client fd00:244:1::2 -- node fd00:244:1::1; backend i fd00:244:1<i>::2 -- fd00:244:1<i>::1
    node fd00:255:ff::1 -- uplink fd00:255:ff::2 (the node's default route)
    uplink 2001:db8:51::1 -- external client 2001:db8:51::2
    uplink fd00:255:fe::2 -- node2 fd00:255:fe::1; node2 fd00:244:200::1 -- remote ::2

Unique local addresses (RFC 4193) inside the cluster, the documentation prefix outside it.
Addresses go on with `nodad`: duplicate address detection would hold them tentative for
the first seconds, and traffic in those seconds fails.
"""

from __future__ import annotations

SERVICE_CIDR6 = "fd00:96::/108"
WEB_VIP6, EMPTY_VIP6 = "fd00:96::10", "fd00:96::20"
CLUSTER_CIDR6 = "fd00:244::/32"  # every pod, on either node: fd00:244:<link>::/64 each
CLIENT_IP6, CLIENT_GATEWAY6 = "fd00:244:1::2", "fd00:244:1::1"
UPLINK_NODE_IP6, UPLINK_IP6 = "fd00:255:ff::1", "fd00:255:ff::2"
EXTERNAL_CLIENT_IP6, EXTERNAL_GATEWAY6 = "2001:db8:51::2", "2001:db8:51::1"
NODE2_IP6, NODE2_UPLINK_IP6 = "fd00:255:fe::1", "fd00:255:fe::2"
REMOTE_BACKEND_IP6, REMOTE_BACKEND_GATEWAY6 = "fd00:244:200::2", "fd00:244:200::1"
FORWARDING = "net.ipv6.conf.all.forwarding"


def backend_ip6(index: int) -> str:
    return f"fd00:244:{10 + index}::2"


def _address(address: str, prefix: int, device: str) -> str:
    return f"addr add {address}/{prefix} dev {device} nodad"


def node_commands(backends: int) -> list[str]:
    commands = [
        _address(CLIENT_GATEWAY6, 64, "to-client"),
        _address(UPLINK_NODE_IP6, 64, "uplink"),
        *(_address(f"fd00:244:{10 + i}::1", 64, f"to-be{i}") for i in range(1, backends + 1)),
        f"route add default via {UPLINK_IP6}",
    ]
    return commands


def client_commands() -> list[str]:
    return [_address(CLIENT_IP6, 64, "eth0"), f"route add default via {CLIENT_GATEWAY6}"]


def backend_commands(index: int) -> list[str]:
    return [
        _address(backend_ip6(index), 64, "eth0"),
        f"route add default via fd00:244:{10 + index}::1",
    ]


def uplink_commands() -> list[str]:
    """A router: pods and the service range via the node, the remote pod via node2."""
    return [
        _address(UPLINK_IP6, 64, "eth0"),
        _address(EXTERNAL_GATEWAY6, 64, "to-ext"),
        _address(NODE2_UPLINK_IP6, 64, "to-node2"),
        f"route add fd00:244:200::/64 via {NODE2_IP6}",
        f"route add {CLUSTER_CIDR6} via {UPLINK_NODE_IP6}",
        f"route add {SERVICE_CIDR6} via {UPLINK_NODE_IP6}",
    ]


def external_commands() -> list[str]:
    return [
        _address(EXTERNAL_CLIENT_IP6, 64, "eth0"),
        f"route add default via {EXTERNAL_GATEWAY6}",
    ]


def node2_commands() -> list[str]:
    return [
        _address(NODE2_IP6, 64, "eth0"),
        _address(REMOTE_BACKEND_GATEWAY6, 64, "to-pod"),
        f"route add default via {NODE2_UPLINK_IP6}",
    ]


def remote_commands() -> list[str]:
    return [
        _address(REMOTE_BACKEND_IP6, 64, "eth0"),
        f"route add default via {REMOTE_BACKEND_GATEWAY6}",
    ]
