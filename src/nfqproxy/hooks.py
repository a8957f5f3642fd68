"""The fixed iptables rules that hand service traffic to the queue and bring replies back.

Their number never depends on how many services or endpoints there are. The design and
the hook order are explained in docs/design.md; in short:

Every packet (the fast and reference paths):
  raw    PREROUTING, OUTPUT  -> NFQPROXY-SERVICES: -d <service range>, or an external
         frontend (the nfqproxy-frontends set) -> NFQPROXY-QUEUE: the source's bits
         (pod, off-cluster, node) on the packet mark, then -j NFQUEUE
         (priority -300: before conntrack, so conntrack records client -> backend)
  mangle PREROUTING, OUTPUT  -> NFQPROXY-MARK: proxied mark on the packet -> connmark
  mangle INPUT, POSTROUTING  -> NFQPROXY-REPLIES: connmark + reply direction -> NFQUEUE
First packets only (the offload path; its DNAT map is in nf_tables, datapath/offload/nft.py):
  mangle PREROUTING, OUTPUT  -> NFQPROXY-FIRST: -d <service range> or an external
         frontend, conntrack NEW, no proxied connmark yet -> NFQPROXY-QUEUE (as above,
         balanced over the queues)
  nat    PREROUTING, OUTPUT  -> NFQPROXY-DECIDED: proxied mark -> saved in the connmark
         (the backend id, for conntrack lookups; later packets skip the queue)
Both:
  filter INPUT, FORWARD, OUTPUT -> NFQPROXY-REJECT: reject mark -> TCP RST / ICMP unreachable
  filter FORWARD -> NFQPROXY-FORWARD: conntrack INVALID -> DROP (as kube-proxy does)
  nat    POSTROUTING -> NFQPROXY-HAIRPIN: masquerade mark -> MASQUERADE (a pod reaching
         itself, or a source the service's policy masquerades)
  Before queueing, packets to an ingress IP with loadBalancerSourceRanges from any other
  source are dropped (the nfqproxy-fw sets), as kube-proxy's firewall chain does.

IPv6 service ranges get the same rules through ip6tables (and the "-v6" sets), IPv4 ones
through iptables: one rule set per family served, each as fixed as the other.

nfqproxy owns the NFQPROXY-* chains and one jump rule to each of them from each built-in
chain listed above. It never
flushes a chain it does not own. Every argument is built from validated numbers and
networks, and commands run without a shell.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from nfqproxy import ipsets
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.model import IPNetwork

log = logging.getLogger(__name__)

COMMENT = "nfqproxy"

CHAIN_SERVICES = "NFQPROXY-SERVICES"
CHAIN_MARK = "NFQPROXY-MARK"
CHAIN_REPLIES = "NFQPROXY-REPLIES"
CHAIN_REJECT = "NFQPROXY-REJECT"
CHAIN_HAIRPIN = "NFQPROXY-HAIRPIN"
CHAIN_FORWARD = "NFQPROXY-FORWARD"
CHAIN_FIRST = "NFQPROXY-FIRST"
CHAIN_DECIDED = "NFQPROXY-DECIDED"
CHAIN_QUEUE = "NFQPROXY-QUEUE"

# (table, built-in chain, our chain), in the order they are installed.
COMMON_JUMPS: tuple[tuple[str, str, str], ...] = (
    ("filter", "INPUT", CHAIN_REJECT),
    ("filter", "FORWARD", CHAIN_REJECT),
    ("filter", "OUTPUT", CHAIN_REJECT),
    ("filter", "FORWARD", CHAIN_FORWARD),
    ("nat", "POSTROUTING", CHAIN_HAIRPIN),
)
EVERY_PACKET_JUMPS = (
    ("mangle", "PREROUTING", CHAIN_MARK),
    ("mangle", "OUTPUT", CHAIN_MARK),
    ("mangle", "INPUT", CHAIN_REPLIES),
    ("mangle", "POSTROUTING", CHAIN_REPLIES),
    ("raw", "PREROUTING", CHAIN_SERVICES),
    ("raw", "OUTPUT", CHAIN_SERVICES),
)
FIRST_PACKET_JUMPS = (
    ("nat", "PREROUTING", CHAIN_DECIDED),
    ("nat", "OUTPUT", CHAIN_DECIDED),
    ("mangle", "PREROUTING", CHAIN_FIRST),
    ("mangle", "OUTPUT", CHAIN_FIRST),
)
# Every jump either mode installs: what remove() and `nfqproxy cleanup` take away.
JUMPS = COMMON_JUMPS + EVERY_PACKET_JUMPS + FIRST_PACKET_JUMPS
# Reached from our own chains only: the source's bits, then the queue, in either table.
INNER_CHAINS = (("raw", CHAIN_QUEUE), ("mangle", CHAIN_QUEUE))
OWNED_CHAINS: tuple[tuple[str, str], ...] = tuple(
    sorted({(t, c) for t, _, c in JUMPS} | set(INNER_CHAINS))
)


class HookError(RuntimeError):
    pass


@dataclass(frozen=True)
class HookConfig:
    service_cidrs: tuple[IPNetwork, ...]
    queue_num: int
    iptables: str = "iptables"
    marks: MarkLayout = field(default_factory=MarkLayout)
    queues: int = 1  # queue_num to queue_num + queues - 1
    first_packets_only: bool = False  # the offload path's rule set
    # --cluster-cidr: sources inside are the cluster's own (kube-proxy's local traffic
    # detector). Empty: no source is called either, and nothing is masqueraded for it.
    cluster_cidrs: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        last = self.queue_num + self.queues - 1
        if self.queue_num < 0 or last > 65535 or self.queues < 1:
            raise ValueError(f"queues {self.queue_num}-{last} are out of range 0-65535")
        if self.iptables not in ("iptables", "iptables-legacy", "iptables-nft"):
            raise ValueError(f"unsupported iptables command {self.iptables!r}")


# The IPv6 twin of each iptables command.
IP6TABLES = {
    "iptables": "ip6tables",
    "iptables-legacy": "ip6tables-legacy",
    "iptables-nft": "ip6tables-nft",
}
REJECT_WITH = {4: "icmp-port-unreachable", 6: "icmp6-port-unreachable"}


def command(config: HookConfig, family: int) -> str:
    """The iptables command of that family: iptables-nft, ip6tables-nft, ..."""
    return config.iptables if family == 4 else IP6TABLES[config.iptables]


def families(config: HookConfig) -> list[int]:
    """The families hooked: those of the service ranges (IPv4 when none is given)."""
    return sorted({cidr.version for cidr in config.service_cidrs}) or [4]


def jumps(config: HookConfig) -> tuple[tuple[str, str, str], ...]:
    """The jumps this configuration installs."""
    mode = FIRST_PACKET_JUMPS if config.first_packets_only else EVERY_PACKET_JUMPS
    return COMMON_JUMPS + mode


def _queue_target(config: HookConfig) -> str:
    if config.queues == 1:
        return f"-j NFQUEUE --queue-num {config.queue_num}"
    # By CPU, not by flow hash: each core's first packets go to its own worker.
    last = config.queue_num + config.queues - 1
    return f"-j NFQUEUE --queue-balance {config.queue_num}:{last} --queue-cpu-fanout"


def _queue_chain_rules(config: HookConfig, family: int) -> list[str]:
    """NFQPROXY-QUEUE: what the data path needs to know of the source, as mark bits
    (datapath/marks.py), then the queue. kube-proxy's EXT chain asks the same questions
    (nfqproxy.external): from a pod of the cluster, from this node, from outside."""
    marks = config.marks
    node, pod, off = marks.source_node, marks.source_pod, marks.source_off_cluster
    rules = [f"-m addrtype --src-type LOCAL -j MARK --set-xmark {node:#x}/{node:#x}"]
    cluster_cidrs = [c for c in config.cluster_cidrs if c.version == family]
    if cluster_cidrs:
        rules.append(f"-j MARK --set-xmark {off:#x}/{off:#x}")
        # In the cluster: the pod bit set, the off-cluster bit cleared, in one step.
        rules += [
            f"-s {cidr} -j MARK --set-xmark {pod:#x}/{pod | off:#x}" for cidr in cluster_cidrs
        ]
    return [*rules, _queue_target(config)]


def _firewall_rule(family: int) -> str:
    """loadBalancerSourceRanges: an ingress IP's port that lists them drops other sources."""
    return (
        f"-m set --match-set {ipsets.set_name(ipsets.FIREWALLED, family)} dst,dst "
        f"-m set ! --match-set {ipsets.set_name(ipsets.ALLOWED, family)} dst,dst,src "
        "-m comment --comment 'loadBalancerSourceRanges' -j DROP"
    )


def chain_rules(config: HookConfig, family: int = 4) -> dict[tuple[str, str], list[list[str]]]:
    """The rules of each owned chain this configuration uses in one family, as iptables
    argument lists."""
    marks = config.marks
    proxied = f"{marks.proxied:#x}/{marks.proxied:#x}"
    reject = f"{marks.reject:#x}/{marks.reject:#x}"
    masquerade = f"{marks.masquerade:#x}/{marks.masquerade:#x}"
    frontends = f"-m set --match-set {ipsets.set_name(ipsets.FRONTENDS, family)} dst,dst"
    service_cidrs = [c for c in config.service_cidrs if c.version == family]
    # shlex only splits these templates into arguments; nothing here reaches a shell.
    rules: dict[tuple[str, str], list[str]]
    if config.first_packets_only:
        # NEW and not yet decided: a UDP flow stays NEW until its first reply, but once
        # its connmark says proxied, its packets skip the queue.
        first = f"-m conntrack --ctstate NEW -m connmark ! --mark {proxied}"
        rules = {
            ("mangle", CHAIN_FIRST): [
                _firewall_rule(family),
                *(
                    f"-d {cidr} {first} -m comment --comment 'first packets to nfqproxy' "
                    f"-j {CHAIN_QUEUE}"
                    for cidr in service_cidrs
                ),
                f"{frontends} {first} -m comment --comment 'external frontends' -j {CHAIN_QUEUE}",
            ],
            ("mangle", CHAIN_QUEUE): _queue_chain_rules(config, family),
            # The nat table sees a connection's first packet only: its mark, our bits only.
            ("nat", CHAIN_DECIDED): [
                f"-m mark --mark {proxied} -j CONNMARK --save-mark "
                f"--nfmask {marks.mask:#x} --ctmask {marks.mask:#x}"
            ],
        }
    else:
        rules = {
            ("raw", CHAIN_SERVICES): [
                _firewall_rule(family),
                *(
                    f"-d {cidr} -m comment --comment 'service range to nfqproxy' -j {CHAIN_QUEUE}"
                    for cidr in service_cidrs
                ),
                f"{frontends} -m comment --comment 'external frontends' -j {CHAIN_QUEUE}",
            ],
            ("raw", CHAIN_QUEUE): _queue_chain_rules(config, family),
            ("mangle", CHAIN_MARK): [f"-m mark --mark {proxied} -j CONNMARK --set-xmark {proxied}"],
            ("mangle", CHAIN_REPLIES): [
                f"-m connmark --mark {proxied} -m conntrack --ctdir REPLY {_queue_target(config)}"
            ],
        }
    rules |= {
        # The backend would drop a packet from its own address (a hairpin), and a backend
        # elsewhere would answer an external client directly: make the source the node's.
        ("nat", CHAIN_HAIRPIN): [f"-m mark --mark {masquerade} -j MASQUERADE"],
        # A packet conntrack finds out of window (a retransmission after a long stall,
        # say) gets no conntrack entry, so no reverse NAT: it would reach the client from
        # the backend's address and the client would reset the connection. kube-proxy
        # drops these for the same reason (kubernetes/kubernetes#74839).
        ("filter", CHAIN_FORWARD): ["-m conntrack --ctstate INVALID -j DROP"],
        ("filter", CHAIN_REJECT): [
            f"-p tcp -m mark --mark {reject} -j REJECT --reject-with tcp-reset",
            f"-m mark --mark {reject} -j REJECT --reject-with {REJECT_WITH[family]}",
        ],
    }
    return {
        chain: [shlex.split(rule) for rule in chain_rules] for chain, chain_rules in rules.items()
    }


def _jump(builtin: str, chain: str) -> list[str]:
    return [builtin, "-m", "comment", "--comment", COMMENT, "-j", chain]


class HookManager:
    def __init__(self, config: HookConfig) -> None:
        self.config = config
        self.sets = ipsets.FrontendSets(tuple(families(config)))
        # install() may run on a worker thread (the watchdog); remove() must not race it,
        # and nothing may be installed once remove() has run.
        self._lock = threading.Lock()
        self._removed = False

    def _run(self, command: Sequence[str], stdin: str | None = None, check: bool = True) -> bool:
        try:
            result = subprocess.run(
                command, input=stdin, capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            # ip6tables missing where only IPv4 is served: nothing of ours can be there.
            if check:
                raise HookError(f"{command[0]} is not installed") from None
            return False
        if check and result.returncode != 0:
            raise HookError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result.returncode == 0

    def _iptables(self, family: int, table: str, *args: str, check: bool = True) -> bool:
        return self._run([command(self.config, family), "-w", "5", "-t", table, *args], check=check)

    def install(self) -> None:
        """Creates or refreshes the owned chains, then adds missing jumps. Idempotent."""
        with self._lock:
            if not self._removed:
                self.sets.ensure()  # the rules name them
                for family in families(self.config):
                    self._install(family)
                log.info(
                    "hooks installed: queue %d for %s",
                    self.config.queue_num,
                    ", ".join(map(str, self.config.service_cidrs)),
                )

    def _install(self, family: int) -> None:
        restore = command(self.config, family) + "-restore"
        lines: list[str] = []
        rules = chain_rules(self.config, family)
        for table in sorted({t for t, _ in rules}):
            lines.append(f"*{table}")
            chains = sorted(c for t, c in rules if t == table)
            # With --noflush, naming a chain creates it or empties it; nothing else is touched.
            lines += [f":{chain} - [0:0]" for chain in chains]
            for chain in chains:
                lines += [" ".join(["-A", chain, *_quote(rule)]) for rule in rules[(table, chain)]]
            lines.append("COMMIT")
        self._run([restore, "-w", "5", "--noflush"], stdin="\n".join(lines) + "\n")
        for table, builtin, chain in jumps(self.config):
            if not self._iptables(family, table, "-C", *_jump(builtin, chain), check=False):
                self._iptables(family, table, "-I", builtin, "1", *_jump(builtin, chain)[1:])

    def missing(self) -> list[str]:
        """What of our rule set is not in place, from one iptables-save per family: like
        kube-proxy's canary chains, this notices a flush by someone else. Empty when all
        is well."""
        gone = []
        for family in families(self.config):
            save = command(self.config, family) + "-save"
            result = subprocess.run([save], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise HookError(f"{save} failed: {result.stderr.strip()}")
            rules: dict[str, list[str]] = {}
            table = ""
            for line in result.stdout.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith("-A "):
                    rules.setdefault(table, []).append(line)
            where = "" if family == 4 else " (IPv6)"
            for table, builtin, chain in jumps(self.config):
                if not any(
                    r.startswith(f"-A {builtin} ") and r.endswith(f"-j {chain}") and COMMENT in r
                    for r in rules.get(table, [])
                ):
                    gone.append(f"{table} {builtin} -> {chain}{where}")
            for (table, chain), wanted in chain_rules(self.config, family).items():
                present = sum(r.startswith(f"-A {chain} ") for r in rules.get(table, []))
                if present != len(wanted):
                    gone.append(f"{table} {chain}: {present} of {len(wanted)} rules{where}")
        return gone

    def remove(self) -> int:
        """Deletes our jumps and chains wherever they are, in both families. Returns how
        many jump rules went."""
        with self._lock:
            self._removed = True
            removed = sum(self._remove(family) for family in (4, 6))
            removed += remove_offload_table()
            self.sets.destroy()  # after the rules that named them
            return removed

    def _remove(self, family: int) -> int:
        removed = 0
        for table, builtin, chain in JUMPS:
            while self._iptables(family, table, "-D", *_jump(builtin, chain), check=False):
                removed += 1
        # Every chain emptied before any is deleted: ours jump to each other.
        flushed = [
            (table, chain)
            for table, chain in OWNED_CHAINS
            if self._iptables(family, table, "-F", chain, check=False)
        ]
        for table, chain in flushed:
            self._iptables(family, table, "-X", chain, check=False)
        return removed


def remove_offload_table() -> int:
    """The offload path's nf_tables table (its DNAT map): 1 if it was there and went.
    Connections it already sent to a backend keep their NAT: conntrack holds it."""
    from nfqproxy.datapath.offload.nft import NftError, remove_table

    try:
        return int(remove_table())
    except NftError as exc:
        log.warning("cannot remove the offload path's nf_tables table: %s", exc)
        return 0


def _quote(rule: Sequence[str]) -> list[str]:
    # iptables-restore splits on spaces and honours double quotes; only comments need them.
    return [f'"{arg}"' if " " in arg else arg for arg in rule]
