"""The sets the hook rules match external frontends by, so that the rules stay fixed
however many NodePorts, externalIPs and ingress IPs there are.

  nfqproxy-frontends  hash:ip,port      every external address, protocol and port: to the queue
  nfqproxy-fw         hash:ip,port      the ingress IPs with loadBalancerSourceRanges
  nfqproxy-fw-allow   hash:ip,port,net  ... and the source ranges each allows

A set holds one family: IPv6 frontends go to the same sets named with "-v6" (set_name()),
which ip6tables' rules match.

The first sync, and any after a failed one, fills fresh sets and swaps them in (`ipset
swap`), so a rule never sees a half-written set; other syncs add and delete the entries
that changed, in one `ipset restore`, each entry atomically. An endpoint change touches no
set at all: the entries name frontends, not backends. Entries are built from validated
addresses, protocol names and port numbers only, and are handed to `ipset restore` on its
standard input: no shell.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network

from nfqproxy.model import IPNetwork, ServicePort

FRONTENDS = "nfqproxy-frontends"
FIREWALLED = "nfqproxy-fw"
ALLOWED = "nfqproxy-fw-allow"
SET_TYPES = {FRONTENDS: "hash:ip,port", FIREWALLED: "hash:ip,port", ALLOWED: "hash:ip,port,net"}
NEXT = "-next"  # the suffix of the set being filled, before the swap
FAMILIES = {4: ("", "inet"), 6: ("-v6", "inet6")}  # name suffix, ipset family
MAX_ELEMENTS = 1 << 20  # ipset's default maxelem is 65536: 10k services x 3 node IPs pass it


class IpsetError(RuntimeError):
    pass


@dataclass(frozen=True)
class SetContents:
    frontends: frozenset[str] = frozenset()
    firewalled: frozenset[str] = frozenset()
    allowed: frozenset[str] = frozenset()

    def by_name(self) -> dict[str, frozenset[str]]:
        return {FRONTENDS: self.frontends, FIREWALLED: self.firewalled, ALLOWED: self.allowed}

    def __or__(self, other: SetContents) -> SetContents:
        return SetContents(
            self.frontends | other.frontends,
            self.firewalled | other.firewalled,
            self.allowed | other.allowed,
        )

    def __sub__(self, other: SetContents) -> SetContents:
        return SetContents(
            self.frontends - other.frontends,
            self.firewalled - other.firewalled,
            self.allowed - other.allowed,
        )

    def __bool__(self) -> bool:
        return bool(self.frontends or self.firewalled or self.allowed)


def _halves(network: IPNetwork) -> list[IPNetwork]:
    """A hash:net set takes prefixes of 1-32 bits: 0.0.0.0/0 goes in as its two halves."""
    if network.prefixlen:
        return [network]
    return (
        [ip_network("0.0.0.0/1"), ip_network("128.0.0.0/1")]
        if isinstance(network, IPv4Network)
        else [ip_network("::/1"), ip_network("8000::/1")]
    )


def port_entries(port: ServicePort | None) -> SetContents:
    """One frontend's entries; none for a ClusterIP, which the service range matches."""
    if port is None or port.kind == "ClusterIP":
        return SetContents()
    entry = f"{port.vip},{port.protocol.lower()}:{port.port}"
    if not port.source_ranges:
        return SetContents(frozenset([entry]))
    allowed = frozenset(f"{entry},{net}" for r in port.source_ranges for net in _halves(r))
    return SetContents(frozenset([entry]), frozenset([entry]), allowed)


def set_contents(ports: Iterable[ServicePort]) -> SetContents:
    """The sets' entries for these frontends."""
    # Gathered in mutable sets: a union per port would copy the growing sets 10,000 times.
    gathered: dict[str, set[str]] = {FRONTENDS: set(), FIREWALLED: set(), ALLOWED: set()}
    for port in ports:
        for name, entries in port_entries(port).by_name().items():
            gathered[name] |= entries
    return SetContents(*(frozenset(gathered[n]) for n in (FRONTENDS, FIREWALLED, ALLOWED)))


def set_name(name: str, family: int) -> str:
    """The kernel set of that family: nfqproxy-frontends, nfqproxy-frontends-v6, ..."""
    return name + FAMILIES[family][0]


def _family(entry: str) -> int:
    return 6 if ":" in entry.split(",", 1)[0] else 4


def _create(name: str, kind: str, family: int) -> str:
    return f"create {name} {kind} family {FAMILIES[family][1]} maxelem {MAX_ELEMENTS} -exist"


class FrontendSets:
    """The sets in the kernel, in the families served, and what they were last given."""

    def __init__(self, families: tuple[int, ...] = (4,)) -> None:
        self.families = families
        self.current: SetContents | None = None

    def _restore(self, lines: list[str]) -> None:
        result = subprocess.run(
            ["ipset", "restore"],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise IpsetError(f"ipset restore failed: {result.stderr.strip()}")

    def ensure(self) -> None:
        """Creates any missing set, empty (the rules name them, so they must exist first)."""
        self._restore(
            [
                _create(set_name(name, family), kind, family)
                for family in self.families
                for name, kind in SET_TYPES.items()
            ]
        )

    def change(self, added: SetContents, removed: SetContents) -> None:
        """Adds and deletes entries in place, in one restore (after replace())."""
        if self.current is None:
            raise IpsetError("the sets were never filled; replace() them first")
        lines = [
            f"del {set_name(name, _family(entry))} {entry} -exist"
            for name, entries in removed.by_name().items()
            for entry in sorted(entries)
        ]
        lines += [
            f"add {set_name(name, _family(entry))} {entry} -exist"
            for name, entries in added.by_name().items()
            for entry in sorted(entries)
        ]
        if lines:
            self._restore(lines)
        self.current = (self.current - removed) | added

    def replace(self, contents: SetContents) -> bool:
        """Swaps in the sets that differ from what they hold; returns whether any did."""
        old = self.current.by_name() if self.current is not None else {}
        lines: list[str] = []
        for name, entries in contents.by_name().items():
            for family in self.families:
                wanted = {e for e in entries if _family(e) == family}
                if name in old and {e for e in old[name] if _family(e) == family} == wanted:
                    continue
                target = set_name(name, family)
                fresh = target + NEXT
                lines += [
                    _create(fresh, SET_TYPES[name], family),
                    f"flush {fresh}",
                    *(f"add {fresh} {entry}" for entry in sorted(wanted)),
                    _create(target, SET_TYPES[name], family),
                    f"swap {fresh} {target}",
                    f"destroy {fresh}",
                ]
        if not lines:
            return False
        self._restore(lines)
        self.current = contents
        return True

    def destroy(self) -> int:
        """Removes the sets of both families (once no rule names them), whatever is served:
        `nfqproxy cleanup` finds them all. Returns how many were there."""
        removed = 0
        for family in FAMILIES:
            for name in SET_TYPES:
                target = set_name(name, family)
                for kernel_set in (target, target + NEXT):
                    result = subprocess.run(
                        ["ipset", "destroy", kernel_set], capture_output=True, check=False
                    )
                    removed += kernel_set == target and result.returncode == 0
        self.current = None
        return removed
