"""Dual-stack Services (KEP-563): the API server's rules for spec.ipFamilyPolicy,
spec.ipFamilies and spec.clusterIPs, which a hand-written manifest may break."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nfqproxy.fields import IPAddress, ObjectError, read_list

IP_FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
IP_FAMILIES = {"IPv4": 4, "IPv6": 6}


def check_ip_families(spec: Mapping[str, Any], cluster_ips: list[IPAddress]) -> None:
    """The API server's dual-stack rules (KEP-563), which a hand-written manifest may break:
    spec.ipFamilyPolicy and spec.ipFamilies agree with spec.clusterIPs, one address per
    family at most. The proxy then serves each ClusterIP of a family it has a range for,
    as kube-proxy's per-family proxiers do; the policy itself picks nothing here."""
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in IP_FAMILY_POLICIES:
        raise ObjectError(
            "spec.ipFamilyPolicy", f"{policy!r:.40} is not one of {', '.join(IP_FAMILY_POLICIES)}"
        )
    families: list[int] = []
    for i, name in enumerate(read_list(spec.get("ipFamilies"), "spec.ipFamilies")):
        if not isinstance(name, str) or name not in IP_FAMILIES:
            raise ObjectError(f"spec.ipFamilies[{i}]", f"{name!r:.40} is not IPv4 or IPv6")
        if IP_FAMILIES[name] in families:
            raise ObjectError(f"spec.ipFamilies[{i}]", f"{name} is listed twice")
        families.append(IP_FAMILIES[name])
    if len(cluster_ips) > 2:
        raise ObjectError("spec.clusterIPs", f"holds {len(cluster_ips)} addresses; at most 2")
    if len(cluster_ips) == 2 and cluster_ips[0].version == cluster_ips[1].version:
        raise ObjectError(
            "spec.clusterIPs", "holds two addresses of one family; dual-stack needs one of each"
        )
    for i, (vip, family) in enumerate(zip(cluster_ips, families, strict=False)):
        if vip.version != family:
            raise ObjectError(
                f"spec.clusterIPs[{i}]", f"{vip} is not IPv{family}, as spec.ipFamilies[{i}] says"
            )
    if policy == "SingleStack" and max(len(families), len(cluster_ips)) > 1:
        raise ObjectError(
            "spec.ipFamilyPolicy", "SingleStack allows one IP family and one ClusterIP"
        )
    if policy == "RequireDualStack" and len(cluster_ips) == 1:  # none: headless
        raise ObjectError(
            "spec.clusterIPs",
            "RequireDualStack needs an IPv4 and an IPv6 ClusterIP (the API server allocates "
            "both; a manifest must list both)",
        )
