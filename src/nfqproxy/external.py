"""External frontends: a service's NodePorts, externalIPs and LoadBalancer ingress IPs,
with the endpoints and the source handling kube-proxy gives them.

kube-proxy sends every external destination through one chain per service port (its EXT
chain; nftables mode: external-*), and the data path follows that chain's rules:

- externalTrafficPolicy Cluster: any endpoint of the cluster (the cluster policy, whatever
  internalTrafficPolicy says), and every source masqueraded, so that replies come back
  through this node.
- externalTrafficPolicy Local, in this order:
  1. traffic from the cluster's own pods (--cluster-cidr, kube-proxy's local traffic
     detector) goes to the cluster-wide endpoints, unmasqueraded;
  2. traffic from the node itself goes there too, masqueraded (its source is a node
     address, which the backend could not answer otherwise);
  3. anything else goes to this node's endpoints, with its source kept. With none on
     this node but some elsewhere, it is dropped; with none anywhere, rejected.

The tables pick (1)-(3) from two source bits that fixed rules set before the queue
(nfqproxy.hooks); the policy names below say which of those rules apply to a frontend.
kube-proxy's unit tests that pin these cases (TestInternalExternalMasquerade,
TestExternalTrafficPolicyLocal, topology_test.go's "iTP: Local, eTP: Local" rows) are
restated in tests/unit/test_external.py.
"""

from __future__ import annotations

from nfqproxy.fields import IPAddress
from nfqproxy.model import Backend, ServicePort, ServicePortSpec, ServiceSpec

# ServicePort.policy: how the data path treats a frontend's sources.
POLICY_INTERNAL = "internal"  # a ClusterIP: masquerade sources outside the cluster
POLICY_EXTERNAL_CLUSTER = "external-cluster"  # any endpoint, every source masqueraded
POLICY_EXTERNAL_LOCAL = "external-local"  # steps (1)-(3) above
POLICIES = (POLICY_INTERNAL, POLICY_EXTERNAL_CLUSTER, POLICY_EXTERNAL_LOCAL)


def external_addresses(
    service: ServiceSpec, port: ServicePortSpec, family: str, nodeport_ips: tuple[IPAddress, ...]
) -> list[tuple[str, IPAddress, int]]:
    """(kind, address, port) of every external frontend of one service port and family."""
    version = 4 if family == "IPv4" else 6
    found: list[tuple[str, IPAddress, int]] = []
    if port.node_port:
        found += [("NodePort", ip, port.node_port) for ip in nodeport_ips if ip.version == version]
    found += [("ExternalIP", ip, port.port) for ip in service.external_ips if ip.version == version]
    found += [
        ("LoadBalancer", ip, port.port) for ip in service.ingress_ips if ip.version == version
    ]
    return found


def external_ports(
    service: ServiceSpec,
    port: ServicePortSpec,
    name: str,
    family: str,
    cluster: tuple[Backend, ...],
    local: tuple[tuple[Backend, ...], bool] | None,
    present: set[Backend],
    nodeport_ips: tuple[IPAddress, ...],
    terminating: tuple[Backend, ...] = (),
) -> list[ServicePort]:
    """The external frontends of one service port: cluster, the endpoints the cluster
    policy chooses; local, with externalTrafficPolicy Local, this node's and whether others
    have usable ones (then traffic from outside is dropped, not rejected); present, every
    endpoint of the port; terminating, those of cluster and local chosen as the
    serving-and-terminating fallback."""
    addresses = external_addresses(service, port, family, nodeport_ips)
    alternate: tuple[Backend, ...] = ()
    if local is None:
        backends, policy, no_local = cluster, POLICY_EXTERNAL_CLUSTER, False
    else:
        (backends, no_local), policy, alternate = local, POLICY_EXTERNAL_LOCAL, cluster
    draining = tuple(sorted(present - set(backends) - set(alternate)))
    return [
        ServicePort(
            name,
            address,
            port.protocol,
            number,
            backends,
            service.affinity_seconds,
            draining,
            no_local,
            kind,
            policy,
            alternate,
            # Of the address's family only, as kube-proxy's per-family proxiers filter them:
            # a family left with none has no firewall.
            tuple(r for r in service.source_ranges if r.version == address.version)
            if kind == "LoadBalancer"
            else (),
            terminating=terminating,
        )
        for kind, address, number in addresses
    ]
