"""--iptables auto decides as kube-proxy's image does, from what each back end holds."""

from __future__ import annotations

import pytest

from nfqproxy import iptables_backend

HINT = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
CANARY = "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"


def rules(count: int) -> str:
    return "*filter\n" + "".join(f"-A INPUT -p tcp --dport {p} -j ACCEPT\n" for p in range(count))


@pytest.mark.parametrize(
    ("nft", "legacy", "chosen", "why"),
    [
        ({"mangle": HINT}, {"all": rules(9)}, "iptables-nft", "KUBE-IPTABLES-HINT chain is in"),
        ({"all": rules(9)}, {"mangle": CANARY}, "iptables-legacy", "KUBE-KUBELET-CANARY"),
        ({"mangle": HINT}, {"mangle": HINT}, "iptables-nft", "is in iptables-nft"),
        ({"all": rules(2)}, {"all": rules(5)}, "iptables-legacy", "more rules (5 against 2"),
        ({"all": rules(5)}, {"all": rules(5)}, "iptables-nft", "as many rules or more (5"),
        ({}, {}, "iptables-nft", "(0 against 0 in legacy)"),  # a bare host, or no binaries
    ],
)
def test_the_back_end_is_the_kubelets_else_the_fuller_else_nft(
    nft: dict[str, str], legacy: dict[str, str], chosen: str, why: str
) -> None:
    outputs = {"iptables-nft-save": nft, "iptables-legacy-save": legacy}
    asked = []

    def save(arguments: list[str]) -> str:
        asked.append(arguments)
        if arguments[0].startswith("ip6"):
            return ""
        table = arguments[2] if len(arguments) > 2 else "all"
        if table == "all":  # a whole save holds its mangle table too
            return "".join(outputs[arguments[0]].values())
        return outputs[arguments[0]].get(table, "")

    found, reason = iptables_backend.detect(save)
    assert found == chosen and why in reason
    # legacy's tables are never named: that would make the kernel create them
    assert not [a for a in asked if "legacy" in a[0] and len(a) > 1]
