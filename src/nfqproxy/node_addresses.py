"""--nodeport-addresses: which of the node's addresses serve NodePorts.

As kube-proxy's flag: a list of CIDRs (every local address inside one of them serves), or
the special value `primary`, the node's primary address. nftables mode's default,
`primary`, is ours too: a NodePort on every local address (iptables mode's default) also
answers on addresses the operator never meant to expose, such as a management network's.

The node's primary address, one per family served, is --node-ip when given. kube-proxy
reads it from the Node object; nfqproxy does not watch Nodes, so without --node-ip it
takes the preferred source address of the family's default route, which is the node's
InternalIP on the usual single-homed node. Loopback and link-local addresses never serve
NodePorts (nftables mode does not serve loopback either).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from ipaddress import ip_address, ip_network

from nfqproxy.fields import IPAddress
from nfqproxy.model import IPNetwork

PRIMARY = "primary"
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def parse_nodeport_addresses(values: Sequence[str]) -> tuple[str | IPNetwork, ...]:
    """The flag's values: `primary`, or CIDRs of either family."""
    parsed: list[str | IPNetwork] = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            if item == PRIMARY:
                parsed.append(PRIMARY)
                continue
            try:
                if "%" in item:  # an IPv6 zone: any text, which str() keeps
                    raise ValueError(item)
                parsed.append(ip_network(item, strict=False))
            except ValueError:
                raise ValueError(
                    f"--nodeport-addresses: {item!r} is neither a CIDR nor {PRIMARY!r}"
                ) from None
    if PRIMARY in parsed and len(parsed) > 1:
        raise ValueError(f"--nodeport-addresses: {PRIMARY!r} cannot be combined with CIDRs")
    return tuple(parsed) or (PRIMARY,)


def parse_node_ips(values: Sequence[str]) -> tuple[IPAddress, ...]:
    """--node-ip: one address, or one per family separated by a comma (as kubelet's)."""
    found: list[IPAddress] = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                if "%" in item:  # an IPv6 zone: it would reach the sets' input
                    raise ValueError(item)
                found.append(ip_address(item))
            except ValueError:
                raise ValueError(f"--node-ip: {item!r} is not an IP address") from None
    if len({a.version for a in found}) != len(found):
        raise ValueError(f"--node-ip: {', '.join(map(str, found))}: one address per family")
    return tuple(found)


def local_addresses(version: int) -> list[tuple[IPAddress, int]]:
    """Every address of this network namespace in the family, with its interface index."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [
            (ip_address(message.get_attr("IFA_ADDRESS")), message["index"])
            for message in ipr.get_addr(family=FAMILIES[version])
        ]


def default_route_source(version: int) -> IPAddress | None:
    """The address the kernel would send from on the family's default route, if any."""
    from pyroute2 import IPRoute

    family = FAMILIES[version]
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=family):
            source = route.get_attr("RTA_PREFSRC")
            if source:
                return ip_address(source)
            oif = route.get_attr("RTA_OIF")
            for message in ipr.get_addr(family=family, index=oif):
                address = ip_address(message.get_attr("IFA_ADDRESS"))
                if not address.is_link_local:  # an IPv6 link's fe80:: address
                    return address
    return None


def resolve(
    nodeport_addresses: Sequence[str | IPNetwork],
    node_ips: Sequence[IPAddress],
    versions: Iterable[int] = (4,),
) -> tuple[IPAddress, ...]:
    """The addresses NodePorts are served on now, in the families served. Empty when none
    qualifies (no default route and no --node-ip, say): NodePorts are then served nowhere,
    and the status says so."""
    versions = sorted(set(versions))
    if PRIMARY in nodeport_addresses:
        found = []
        for version in versions:
            given = [a for a in node_ips if a.version == version]
            primary = given[0] if given else default_route_source(version)
            if primary is not None and not primary.is_loopback:
                found.append(primary)
        return tuple(found)
    networks = [n for n in nodeport_addresses if not isinstance(n, str)]
    return tuple(
        sorted(
            {
                address
                for version in versions
                for address, _ in local_addresses(version)
                if not address.is_loopback
                and not address.is_link_local
                and any(address in n for n in networks if n.version == version)
            },
            key=lambda a: (a.version, a),
        )
    )
