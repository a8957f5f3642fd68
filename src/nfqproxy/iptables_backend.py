"""`--iptables auto`: which iptables back end the host uses, legacy or nft, decided as
kube-proxy's image decides it (kubernetes-sigs/iptables-wrappers): the kubelet's own
chains say which one it uses; failing those, the back end holding more rules; failing
that, nft. Rules in the back end the host does not use would be ignored by it, or worse,
fight its own.

Only fixed commands run here (the save commands of both back ends and both families);
nothing from an object reaches them.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable

log = logging.getLogger(__name__)

BACK_ENDS = ("iptables-nft", "iptables-legacy")
# Chains the kubelet (or kube-proxy) creates in the back end it uses.
_HINT = re.compile(r"^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) ", re.MULTILINE)

Save = Callable[[list[str]], str]


def _save(arguments: list[str]) -> str:
    """A save command's output; empty when the command is missing or fails (a host
    without that back end has no rules in it)."""
    try:
        done = subprocess.run(arguments, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def resolve(asked: str) -> str:
    """The iptables command for --iptables: as asked, or for auto the host's, logged."""
    if asked != "auto":
        return asked
    chosen, why = detect()
    log.info("--iptables auto: %s, as %s", chosen, why)
    return chosen


def _saved(save: Save, back_end: str, *options: str) -> str:
    """Both families' save output of a back end (iptables-nft-save, ip6tables-nft-save)."""
    suffix = back_end.removeprefix("iptables")
    return "".join(
        save([f"{family}{suffix}-save", *options]) for family in ("iptables", "ip6tables")
    )


def detect(save: Save = _save) -> tuple[str, str]:
    """(the iptables command to use, why), for this network namespace. As the wrapper:
    nft's mangle table first (cheap, and the common case); legacy's whole save, since
    `-t mangle` would make the legacy kernel table exist; then the rule counts."""
    looks = (("iptables-nft", ("-t", "mangle")), ("iptables-legacy", ()))
    for back_end, options in looks:
        found = _HINT.search(_saved(save, back_end, *options))
        if found:
            return back_end, f"the kubelet's {found.group(1)} chain is in {back_end}"
    counts = {
        back_end: sum(line.startswith("-") for line in _saved(save, back_end).splitlines())
        for back_end in BACK_ENDS
    }
    if counts["iptables-legacy"] > counts["iptables-nft"]:
        return "iptables-legacy", (
            f"iptables-legacy holds more rules ({counts['iptables-legacy']} against "
            f"{counts['iptables-nft']} in nft)"
        )
    return "iptables-nft", (
        f"no kubelet chain in either back end, and nft holds as many rules or more "
        f"({counts['iptables-nft']} against {counts['iptables-legacy']} in legacy)"
    )
