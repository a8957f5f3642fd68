"""--nodeport-addresses: which of the node's addresses serve NodePorts.

As kube-proxy's flag: a list of CIDRs (every local address inside one of them serves), or
the special value `primary`, the node's primary address. nftables mode's default,
`primary`, is ours too: a NodePort on every local address (iptables mode's default) also
answers on addresses the operator never meant to expose, such as a management network's.

The node's primary address is --node-ip when given. kube-proxy reads it from the Node
object; nfqproxy does not watch Nodes, so without --node-ip it takes the preferred source
address of the default route, which is the node's InternalIP on the usual single-homed
node. Loopback addresses never serve NodePorts (nftables mode does not either).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, ip_network

PRIMARY = "primary"


def parse_nodeport_addresses(values: Sequence[str]) -> tuple[str | IPv4Network, ...]:
    """The flag's values: `primary`, or IPv4 CIDRs (IPv6 ones are for a later release)."""
    parsed: list[str | IPv4Network] = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            if item == PRIMARY:
                parsed.append(PRIMARY)
                continue
            try:
                network = ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"--nodeport-addresses: {item!r} is neither a CIDR nor {PRIMARY!r}"
                ) from None
            if not isinstance(network, IPv4Network):
                raise ValueError(f"--nodeport-addresses: {item} is IPv6; IPv4 only for now")
            parsed.append(network)
    if PRIMARY in parsed and len(parsed) > 1:
        raise ValueError(f"--nodeport-addresses: {PRIMARY!r} cannot be combined with CIDRs")
    return tuple(parsed) or (PRIMARY,)


def local_addresses() -> list[tuple[IPv4Address, int]]:
    """Every IPv4 address of this network namespace, with its interface index."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [
            (IPv4Address(message.get_attr("IFA_ADDRESS")), message["index"])
            for message in ipr.get_addr(family=socket.AF_INET)
        ]


def default_route_source() -> IPv4Address | None:
    """The address the kernel would send from on the default route, if there is one."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            source = route.get_attr("RTA_PREFSRC")
            if source:
                return IPv4Address(source)
            oif = route.get_attr("RTA_OIF")
            for message in ipr.get_addr(family=socket.AF_INET, index=oif):
                return IPv4Address(message.get_attr("IFA_ADDRESS"))
    return None


def resolve(
    nodeport_addresses: Sequence[str | IPv4Network], node_ip: IPv4Address | None
) -> tuple[IPv4Address, ...]:
    """The addresses NodePorts are served on, now. Empty when none qualifies (no default
    route and no --node-ip, say): NodePorts are then served nowhere, and the status says so."""
    if PRIMARY in nodeport_addresses:
        primary = node_ip or default_route_source()
        return () if primary is None or primary.is_loopback else (primary,)
    networks = [n for n in nodeport_addresses if isinstance(n, IPv4Network)]
    found = sorted(
        {
            address
            for address, _ in local_addresses()
            if not address.is_loopback and any(address in n for n in networks)
        }
    )
    return tuple(found)
