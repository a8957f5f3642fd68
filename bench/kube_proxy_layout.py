"""kube-proxy's iptables-mode rules, as pkg/proxy/iptables writes them, for benchmarks.

Chain names are KUBE-SVC- / KUBE-SEP- and the first 16 characters of
base32(sha256(servicePortName + protocol [+ endpoint])). Endpoints after the first are
picked with `-m statistic --mode random --probability 1/(n-i)`, at 10 decimals, and the
last has no match.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass


def chain_hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


@dataclass(frozen=True)
class KubeService:
    name: str  # namespace/name:port, kube-proxy's servicePortName
    vip: str
    port: int
    protocol: str  # "tcp" or "udp"
    endpoints: tuple[tuple[str, int], ...]


def nat_restore(services: list[KubeService]) -> str:
    """iptables-restore input for the nat table (and the jumps into it)."""
    chains = [":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully",
    ]
    for svc in services:
        proto_name = svc.protocol.upper()
        svc_chain = "KUBE-SVC-" + chain_hash(svc.name + proto_name.lower())
        chains.append(f":{svc_chain} - [0:0]")
        rules.append(
            f"-A KUBE-SERVICES -d {svc.vip}/32 -p {svc.protocol} -m comment --comment "
            f'"{svc.name} cluster IP" -m {svc.protocol} --dport {svc.port} -j {svc_chain}'
        )
        count = len(svc.endpoints)
        for i, (ip, port) in enumerate(svc.endpoints):
            endpoint = f"{ip}:{port}"
            sep_chain = "KUBE-SEP-" + chain_hash(svc.name + proto_name.lower() + endpoint)
            chains.append(f":{sep_chain} - [0:0]")
            pick = (
                f"-m statistic --mode random --probability {1 / (count - i):.10f} "
                if i < count - 1
                else ""
            )
            rules.append(
                f'-A {svc_chain} -m comment --comment "{svc.name} -> {endpoint}" {pick}-j {sep_chain}'
            )
            rules.append(f"-A {sep_chain} -s {ip}/32 -j KUBE-MARK-MASQ")
            match = f"-p {svc.protocol} -m {svc.protocol}"
            rules.append(f"-A {sep_chain} {match} -j DNAT --to-destination {endpoint}")
    return "\n".join(["*nat", *chains, *rules, "COMMIT", ""])
