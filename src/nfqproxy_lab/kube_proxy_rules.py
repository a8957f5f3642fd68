"""kube-proxy's rules, as its iptables mode (pkg/proxy/iptables) and its nftables mode write
them: the competitor the benchmarks load, and the layout tests/unit/test_kube_proxy_layout.py
checks. Here in the lab package, not in bench/, so that tests and benchmarks share it
without importing each other.

iptables mode:

- Chain names are KUBE-SVC- / KUBE-SEP- and the first 16 characters of
  base32(sha256(servicePortName + protocol [+ endpoint])).
- KUBE-SERVICES jumps to one KUBE-SVC chain per service port. Endpoints after the first
  are picked with `-m statistic --mode random --probability 1/(n-i)`, at 10 decimals, and
  the last has no match. Each KUBE-SEP chain marks hairpin traffic for masquerade and
  DNATs.
- A service port without endpoints gets a REJECT in the filter table's KUBE-SERVICES.
- A NodePort (externalTrafficPolicy Cluster) is one rule in KUBE-NODEPORTS, which the
  last rule of KUBE-SERVICES reaches for any local destination (after every ClusterIP
  rule), jumping to its KUBE-EXT chain: mark for masquerade, then the KUBE-SVC chain.
- One endpoint change is written as kube-proxy's partial sync (MinimizeIPTablesRestore)
  writes it: KUBE-SERVICES in full, the changed service's chains, and the deletion of
  endpoint chains no longer used, loaded with --noflush.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

from nfqproxy_lab import netns

NAT_CHAINS = ("KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING", "KUBE-NODEPORTS")
NAT_JUMPS = (
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
)
NAT_FIXED = (
    "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
    "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
    "-A KUBE-POSTROUTING -j MASQUERADE --random-fully",
)
FILTER_JUMPS = tuple(
    f"-A {hook} -m conntrack --ctstate NEW -m comment --comment "
    f'"kubernetes service portals" -j KUBE-SERVICES'
    for hook in ("INPUT", "FORWARD", "OUTPUT")
)


def chain_hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


@dataclass(frozen=True)
class KubeService:
    name: str  # namespace/name:port, kube-proxy's servicePortName
    vip: str
    port: int
    protocol: str  # "tcp" or "udp"
    endpoints: tuple[tuple[str, int], ...]
    node_port: int = 0  # 0: a ClusterIP service

    @property
    def chain(self) -> str:
        return "KUBE-SVC-" + chain_hash(self.name + self.protocol)

    @staticmethod
    def _host(ip: str) -> str:
        """One address as a CIDR, in its family (ip6tables takes the same rules)."""
        return f"{ip}/128" if ":" in ip else f"{ip}/32"

    @property
    def external_chain(self) -> str:
        return "KUBE-EXT-" + chain_hash(self.name + self.protocol)

    def nodeport_rules(self) -> list[str]:
        """Its KUBE-NODEPORTS rule and its KUBE-EXT chain (externalTrafficPolicy Cluster)."""
        if not self.node_port or not self.endpoints:
            return []
        return [
            f'-A KUBE-NODEPORTS -m comment --comment "{self.name}" -m {self.protocol} '
            f"-p {self.protocol} --dport {self.node_port} -j {self.external_chain}",
            f'-A {self.external_chain} -m comment --comment "masquerade traffic for '
            f'{self.name} external destinations" -j KUBE-MARK-MASQ',
            f"-A {self.external_chain} -j {self.chain}",
        ]

    def endpoint_chain(self, ip: str, port: int) -> str:
        return "KUBE-SEP-" + chain_hash(f"{self.name}{self.protocol}{ip}:{port}")

    def endpoint_chains(self) -> list[str]:
        return [self.endpoint_chain(ip, port) for ip, port in self.endpoints]

    def portal_rule(self) -> str:
        return (
            f'-A KUBE-SERVICES -m comment --comment "{self.name} cluster IP" '
            f"-m {self.protocol} -p {self.protocol} -d {self._host(self.vip)} --dport {self.port} "
            f"-j {self.chain}"
        )

    def reject_rule(self) -> str:
        return (
            f'-A KUBE-SERVICES -m comment --comment "{self.name} has no endpoints" '
            f"-m {self.protocol} -p {self.protocol} -d {self._host(self.vip)} --dport {self.port} "
            "-j REJECT"
        )

    def chain_rules(self) -> list[str]:
        """The KUBE-SVC chain's balancing rules and each KUBE-SEP chain's rules."""
        rules = []
        count = len(self.endpoints)
        for i, (ip, port) in enumerate(self.endpoints):
            sep = self.endpoint_chain(ip, port)
            pick = (
                f"-m statistic --mode random --probability {1 / (count - i):.10f} "
                if i < count - 1
                else ""
            )
            rules.append(
                f'-A {self.chain} -m comment --comment "{self.name} -> {ip}:{port}" {pick}-j {sep}'
            )
            rules.append(
                f'-A {sep} -m comment --comment "{self.name}" -s {self._host(ip)} -j KUBE-MARK-MASQ'
            )
            target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            rules.append(
                f'-A {sep} -m comment --comment "{self.name}" -m {self.protocol} '
                f"-p {self.protocol} -j DNAT --to-destination {target}"
            )
        return rules


def _declare(chains: Iterable[str]) -> list[str]:
    return [f":{chain} - [0:0]" for chain in chains]  # declaring a chain also flushes it


def _portals(services: list[KubeService]) -> list[str]:
    rules = [svc.portal_rule() for svc in services if svc.endpoints]
    rules.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
        'must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )
    return rules


def restore_all(services: list[KubeService]) -> str:
    """iptables-restore input for the whole layout: the filter and nat tables."""
    filter_rules = [*FILTER_JUMPS, *(svc.reject_rule() for svc in services if not svc.endpoints)]
    nat_chains = _declare(NAT_CHAINS)
    nat_rules = [*NAT_JUMPS, *NAT_FIXED, *_portals(services)]
    for svc in services:
        if svc.endpoints:
            nat_chains += _declare([svc.chain, *svc.endpoint_chains()])
            nat_rules += svc.chain_rules()
        if svc.node_port and svc.endpoints:
            nat_chains += _declare([svc.external_chain])
            nat_rules += svc.nodeport_rules()
    return "\n".join(
        [
            "*filter",
            *_declare(["KUBE-SERVICES"]),
            *filter_rules,
            "COMMIT",
            "*nat",
            *nat_chains,
            *nat_rules,
            "COMMIT",
            "",
        ]
    )


def restore_change(services: list[KubeService], old: KubeService, new: KubeService) -> str:
    """iptables-restore --noflush input for one service's endpoints changing old -> new
    (services already holds new): kube-proxy's partial sync."""
    gone = [c for c in old.endpoint_chains() if c not in new.endpoint_chains()]
    chains = _declare(["KUBE-SERVICES", new.chain, *new.endpoint_chains(), *gone])
    rules = [*_portals(services), *new.chain_rules(), *(f"-X {chain}" for chain in gone)]
    return "\n".join(["*nat", *chains, *rules, "COMMIT", ""])


# Loading an empty table without --noflush flushes it and deletes its chains.
RESTORE_EMPTY = "*filter\nCOMMIT\n*nat\nCOMMIT\n"


# --- kube-proxy's nftables mode ----------------------------------------------------------
#
# One table; a verdict map from VIP . protocol . port to each service's chain, which picks
# an endpoint chain with `numgen random mod n vmap`; a second map sends services without
# endpoints to a reject chain. Names follow kube-proxy's: service-<hash>-ns/name/proto/port
# and endpoint-<hash>-ns/name/proto/port__ip/port. Lookups cost the same at any N.

NFT_TABLE = "ip kube-proxy"
_NFT_MAP_TYPE = "type ipv4_addr . inet_proto . inet_service : verdict"


def _nft_base(svc: KubeService) -> str:
    namespace, rest = svc.name.split("/", 1)
    name, port_name = rest.rsplit(":", 1)
    return f"{namespace}/{name}/{svc.protocol}/{port_name}"


def nft_service_chain(svc: KubeService) -> str:
    return f"service-{chain_hash(svc.name + svc.protocol)[:8]}-{_nft_base(svc)}"


def nft_endpoint_chain(svc: KubeService, ip: str, port: int) -> str:
    endpoint = f"{ip}:{port}"
    digest = chain_hash(svc.name + svc.protocol + endpoint)[:8]
    return f"endpoint-{digest}-{_nft_base(svc)}__{ip}/{port}"


def nft_external_chain(svc: KubeService) -> str:
    return f"external-{chain_hash(svc.name + svc.protocol)[:8]}-{_nft_base(svc)}"


def _nft_service(svc: KubeService) -> tuple[list[str], list[str]]:
    """(chains to add, rules to add) for one service port with endpoints."""
    chains = [nft_service_chain(svc)]
    rules = []
    picks = []
    for i, (ip, port) in enumerate(svc.endpoints):
        chain = nft_endpoint_chain(svc, ip, port)
        chains.append(chain)
        picks.append(f"{i} : goto {chain}")
        rules.append(f"add rule {NFT_TABLE} {chain} ip saddr {ip} jump mark-for-masquerade")
        rules.append(
            f"add rule {NFT_TABLE} {chain} meta l4proto {svc.protocol} dnat to {ip}:{port}"
        )
    vmap = "{ " + ", ".join(picks) + " }"
    rules.append(f"add rule {NFT_TABLE} {chains[0]} numgen random mod {len(picks)} vmap {vmap}")
    return chains, rules


def nft_restore_all(services: list[KubeService], node_ips: tuple[str, ...] = ()) -> str:
    """`nft -f` input for the whole layout, in one transaction. NodePorts answer on
    node_ips (--nodeport-addresses primary, nftables mode's default): the services chain
    looks the destination up in the nodeport-ips set, then protocol . port in the
    service-nodeports map, whose external chain marks for masquerade and goes to the
    service chain (externalTrafficPolicy Cluster)."""
    hooks = [
        (
            "nat-prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
            "jump services",
        ),
        ("nat-output", "type nat hook output priority -100; policy accept;", "jump services"),
        ("masquerading", "type nat hook postrouting priority srcnat; policy accept;", None),
        *(
            (
                f"filter-{hook}",
                f"type filter hook {hook} priority -110; policy accept;",
                "ct state new jump service-endpoints-check",
            )
            for hook in ("input", "forward", "output")
        ),
    ]
    lines = [f"add table {NFT_TABLE}"]
    for name, spec, _ in hooks:
        lines.append(f"add chain {NFT_TABLE} {name} {{ {spec} }}")
    for name in ("mark-for-masquerade", "services", "service-endpoints-check", "reject-chain"):
        lines.append(f"add chain {NFT_TABLE} {name}")
    rules = [
        f"add rule {NFT_TABLE} mark-for-masquerade mark set mark or 0x4000",
        f"add rule {NFT_TABLE} masquerading mark and 0x4000 == 0 return",
        f"add rule {NFT_TABLE} masquerading mark set mark xor 0x4000",
        f"add rule {NFT_TABLE} masquerading masquerade fully-random",
        f"add rule {NFT_TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {NFT_TABLE} services ip daddr @nodeport-ips meta l4proto . th dport "
        "vmap @service-nodeports",
        f"add rule {NFT_TABLE} service-endpoints-check ip daddr . meta l4proto . th dport "
        "vmap @no-endpoint-services",
        f"add rule {NFT_TABLE} reject-chain reject",
    ]
    rules += [f"add rule {NFT_TABLE} {name} {rule}" for name, _, rule in hooks if rule]
    elements, rejects, nodeports = [], [], []
    for svc in services:
        key = f"{svc.vip} . {svc.protocol} . {svc.port}"
        if not svc.endpoints:
            rejects.append(f"{key} : goto reject-chain")
            continue
        chains, service_rules = _nft_service(svc)
        lines += [f"add chain {NFT_TABLE} {chain}" for chain in chains]
        rules += service_rules
        elements.append(f"{key} : goto {chains[0]}")
        if svc.node_port:
            external = nft_external_chain(svc)
            lines.append(f"add chain {NFT_TABLE} {external}")
            rules.append(f"add rule {NFT_TABLE} {external} jump mark-for-masquerade")
            rules.append(f"add rule {NFT_TABLE} {external} goto {chains[0]}")
            nodeports.append(f"{svc.protocol} . {svc.node_port} : goto {external}")
    lines.append(f"add map {NFT_TABLE} service-ips {{ {_NFT_MAP_TYPE}; }}")
    lines.append(f"add map {NFT_TABLE} no-endpoint-services {{ {_NFT_MAP_TYPE}; }}")
    lines.append(
        f"add map {NFT_TABLE} service-nodeports {{ type inet_proto . inet_service : verdict; }}"
    )
    lines.append(f"add set {NFT_TABLE} nodeport-ips {{ type ipv4_addr; }}")
    if node_ips:
        lines.append(f"add element {NFT_TABLE} nodeport-ips {{ {', '.join(node_ips)} }}")
    lines += rules
    for name, items in (
        ("service-ips", elements),
        ("no-endpoint-services", rejects),
        ("service-nodeports", nodeports),
    ):
        for start in range(0, len(items), 1000):  # nft parses huge element lists slowly
            lines.append(
                f"add element {NFT_TABLE} {name} {{ {', '.join(items[start : start + 1000])} }}"
            )
    return "\n".join([*lines, ""])


def nft_restore_change(old: KubeService, new: KubeService) -> str:
    """One service's endpoints changing old -> new, as one nft transaction: new endpoint
    chains, the service chain rewritten, endpoint chains no longer used deleted."""
    chains, rules = _nft_service(new)
    old_chains = {nft_endpoint_chain(old, ip, port) for ip, port in old.endpoints}
    lines = [f"add chain {NFT_TABLE} {chain}" for chain in chains]
    lines += [f"flush chain {NFT_TABLE} {chain}" for chain in chains]
    lines += rules
    lines += [f"delete chain {NFT_TABLE} {chain}" for chain in sorted(old_chains - set(chains))]
    return "\n".join([*lines, ""])


NFT_DELETE = f"delete table {NFT_TABLE}\n"


# Constructs of the layout that an old nft or kernel may refuse: a concatenated verdict map
# and numgen. `nft -c` checks them and changes nothing.
_NFT_PROBE = (
    "add table ip nfqproxy-probe\n"
    "add chain ip nfqproxy-probe c\n"
    f"add map ip nfqproxy-probe m {{ {_NFT_MAP_TYPE}; }}\n"
    "add rule ip nfqproxy-probe c ip daddr . meta l4proto . th dport vmap @m\n"
    "add rule ip nfqproxy-probe c numgen random mod 2 vmap { 0 : accept, 1 : accept }\n"
)


def nft_layout_refused(namespace: str) -> str | None:
    """Why kube-proxy's nftables layout cannot be loaded in this namespace, or None when it
    can: nft is installed and the kernel takes its constructs (checked, not loaded)."""
    if shutil.which("nft") is None:
        return "nft is not installed"
    try:
        netns.run(netns.exec_command(namespace, ["nft", "-c", "-f", "-"]), stdin=_NFT_PROBE)
    except (netns.CommandError, OSError) as exc:
        return f"this kernel or nft refuses kube-proxy's nftables layout: {exc}"
    return None
