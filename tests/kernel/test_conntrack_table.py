"""ConntrackTable against the kernel's conntrack table, in a network namespace of the test's.

Entries are made with conntrack(8) -I, as the offload data path's NAT would leave them:
the original tuple client -> VIP, the reply tuple backend -> client, a ctmark. The module
itself runs in a child process inside the namespace (ip netns exec), never in the
machine's own namespace, and answers in JSON.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nfqproxy
from nfqproxy_lab import netns

pytestmark = pytest.mark.kernel

U32 = 0xFFFF_FFFF
PROXIED = 0x0010_0000  # the offload path's bit; the low bits say which backend
MARK_A, MARK_B = PROXIED | 1, PROXIED | 2
FOREIGN = 0x7  # another program's mark
VIP, DNS_VIP = "10.96.0.10", "10.96.0.53"
# The source tree this test imports nfqproxy from, for the child to import the same one.
SRC = str(Path(nfqproxy.__file__).resolve().parents[1])
_namespace_numbers = itertools.count()

# Runs ConntrackTable calls given as JSON [[method, args...], ...] (or "close") and prints
# one result per call: {"ok": value} or {"error": class name, "message": text}.
DRIVER = """
import json, sys
from ipaddress import ip_address
from nfqproxy.datapath.offload.conntrack import ConntrackTable
table = ConntrackTable(json.loads(sys.argv[2]))
results = []
for method, *args in json.loads(sys.argv[1]):
    try:
        value = getattr(table, method)(*args)
    except Exception as exc:
        results.append({"error": type(exc).__name__, "message": str(exc)})
        continue
    if method == "flows":
        value = sorted(
            [f.proto, str(ip_address(f.client_ip)), f.client_port, str(ip_address(f.vip)),
             f.vport, str(ip_address(f.backend_ip)), f.backend_port, f.mark, f.timeout]
            for f in value
        )
    elif method == "count_by_mark":
        value = {str(key): n for key, n in value.items()}
    results.append({"ok": value})
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Entry:
    proto: str
    client: str
    client_port: int
    vip: str
    vport: int
    backend: str
    backend_port: int
    mark: int
    timeout: int = 300

    def insert_line(self) -> str:
        # Addresses before -p: conntrack(8) reads the options after -p as the protocol's.
        line = f"-I -s {self.client} -d {self.vip} -r {self.backend} -q {self.client}"
        line += f" -p {self.proto} --timeout {self.timeout} --mark {self.mark}"
        if self.proto == "icmp":
            return line + " --icmp-type 8 --icmp-code 0 --icmp-id 7"
        line += f" --sport {self.client_port} --dport {self.vport}"
        line += f" --reply-port-src {self.backend_port} --reply-port-dst {self.client_port}"
        return line + (" --state ESTABLISHED" if self.proto == "tcp" else "")

    def as_flow(self) -> list[Any]:
        """The flow as DRIVER prints it, but for the timeout."""
        proto = {"tcp": 6, "udp": 17}[self.proto]
        return [
            proto,
            self.client,
            self.client_port,
            self.vip,
            self.vport,
            self.backend,
            self.backend_port,
            self.mark,
        ]


TCP_A1 = Entry("tcp", "10.244.1.2", 40001, VIP, 80, "10.244.11.2", 8080, MARK_A, 300)
TCP_A2 = Entry("tcp", "10.244.1.2", 40002, VIP, 80, "10.244.12.2", 8080, MARK_A, 200)
UDP_A = Entry("udp", "10.244.1.2", 40003, DNS_VIP, 53, "10.244.11.2", 5353, MARK_A, 100)
ICMP_A = Entry("icmp", "10.244.1.2", 0, VIP, 0, "10.244.11.2", 0, MARK_A, 30)
TCP_B = Entry("tcp", "10.244.1.3", 40004, VIP, 80, "10.244.13.2", 8080, MARK_B)
TCP_FOREIGN = Entry("tcp", "10.244.1.4", 40005, VIP, 80, "10.244.11.2", 8080, FOREIGN)
UDP_UNMARKED = Entry("udp", "10.244.1.5", 40006, DNS_VIP, 53, "10.244.12.2", 5353, 0)
TCP6_A = Entry("tcp", "fd00::2", 40007, "fd00:96::10", 80, "fd00:11::2", 8080, MARK_A)
ENTRIES = [TCP_A1, TCP_A2, UDP_A, ICMP_A, TCP_B, TCP_FOREIGN, UDP_UNMARKED, TCP6_A]


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace of the test's own, holding ENTRIES; deleted even when the test fails."""
    # t<pid> as the labs' names begin, then ct: unique per test run, apart from any lab.
    name = f"t{os.getpid() % 10000}ct{next(_namespace_numbers)}"
    try:
        netns.add(name)
        insert(name, ENTRIES)
        yield name
    finally:
        netns.delete(name)


def insert(namespace: str, entries: Sequence[Entry]) -> None:
    lines = "\n".join(entry.insert_line() for entry in entries)
    netns.run(netns.exec_command(namespace, ["conntrack", "-R", "-"]), stdin=lines + "\n")


def run_table(
    namespace: str,
    *calls: Sequence[Any],
    wrapper: Sequence[str] = (),
    families: Sequence[int] = (4,),
) -> list[dict[str, Any]]:
    """ConntrackTable's answers to calls, made by a child process in the namespace, for
    the entries of those IP versions."""
    command = ["env", f"PYTHONPATH={SRC}", *wrapper, sys.executable, "-c", DRIVER]
    arguments = [json.dumps(calls), json.dumps(list(families))]
    output = netns.run(netns.exec_command(namespace, [*command, *arguments]))
    results: list[dict[str, Any]] = json.loads(output)
    return results


def ok(result: dict[str, Any]) -> Any:
    assert "ok" in result, result
    return result["ok"]


def marks_left(namespace: str, family: str = "ipv4") -> list[int]:
    """The marks of the namespace's entries of one family, as conntrack(8) lists them."""
    listing = netns.run(netns.exec_command(namespace, ["conntrack", "-L", "-f", family]))
    return sorted(int(m) for m in re.findall(r"\bmark=(\d+)", listing))


def test_flows_are_the_tcp_and_udp_entries_of_the_mark_with_both_tuples(namespace: str) -> None:
    (flows,) = run_table(namespace, ["flows", MARK_A, U32])
    found = ok(flows)
    # The ICMP entry of the mark has no ports: skipped. The IPv6 one is not IPv4.
    assert [flow[:-1] for flow in found] == sorted(e.as_flow() for e in (TCP_A1, TCP_A2, UDP_A))
    for flow, entry in zip(found, sorted((TCP_A1, TCP_A2, UDP_A), key=Entry.as_flow), strict=True):
        assert entry.timeout - 30 < flow[-1] <= entry.timeout, (flow, entry)


def test_a_mask_selects_every_mark_with_those_bits_even_for_mark_zero(namespace: str) -> None:
    proxied, not_proxied = run_table(
        namespace, ["flows", PROXIED, 0xFFF0_0000], ["flows", 0, PROXIED]
    )
    expected = [TCP_A1, TCP_A2, UDP_A, TCP_B]
    assert [f[:-1] for f in ok(proxied)] == sorted(e.as_flow() for e in expected)
    # Mark 0 is a filter too (pyroute2's own dump() would drop it and list everything).
    expected = [TCP_FOREIGN, UDP_UNMARKED]
    assert [f[:-1] for f in ok(not_proxied)] == sorted(e.as_flow() for e in expected)


def test_count_by_mark_counts_every_protocol_per_key(namespace: str) -> None:
    by_mark, by_bit, one_mark, none = run_table(
        namespace,
        ["count_by_mark", PROXIED, 0xFFF0_0000, U32],
        ["count_by_mark", PROXIED, 0xFFF0_0000, 0xFFF0_0000],
        ["count_by_mark", MARK_B, U32, 0xFF],
        ["count_by_mark", PROXIED | 9, U32, U32],
    )
    assert ok(by_mark) == {str(MARK_A): 4, str(MARK_B): 1}  # MARK_A's ICMP entry counts
    assert ok(by_bit) == {str(PROXIED): 5}
    assert ok(one_mark) == {"2": 1}
    assert ok(none) == {}


def test_delete_removes_the_entries_of_the_mark_and_no_other(namespace: str) -> None:
    first, again, counts = run_table(
        namespace,
        ["delete", MARK_A, U32],
        ["delete", MARK_A, U32],  # nothing left to delete: not an error
        ["count_by_mark", 0, 0, U32],
    )
    assert ok(first) is None and ok(again) is None
    assert ok(counts) == {str(MARK_B): 1, str(FOREIGN): 1, "0": 1}
    assert marks_left(namespace) == sorted([0, FOREIGN, MARK_B])
    # IPv4 only: the IPv6 entry of the same mark is not deleted.
    assert marks_left(namespace, "ipv6") == [MARK_A]


@pytest.mark.parametrize("families", [(6,), (4, 6)])
def test_a_table_of_ipv6_or_both_families_finds_and_deletes_their_entries(
    namespace: str, families: tuple[int, ...]
) -> None:
    flows, deleted = run_table(
        namespace, ["flows", MARK_A, U32], ["delete", MARK_A, U32], families=families
    )
    expected = [TCP6_A] + ([TCP_A1, TCP_A2, UDP_A] if 4 in families else [])
    assert [flow[:-1] for flow in ok(flows)] == sorted(e.as_flow() for e in expected)
    assert ok(deleted) is None
    assert marks_left(namespace, "ipv6") == []
    # IPv6 alone keeps to IPv6: the IPv4 entries of the mark stay (the ICMP one too).
    kept = [MARK_A] * 4 if families == (6,) else []
    assert marks_left(namespace) == sorted([0, FOREIGN, MARK_B, *kept])


def test_delete_by_mask_leaves_other_programs_entries(namespace: str) -> None:
    (deleted,) = run_table(namespace, ["delete", PROXIED, 0xFFF0_0000])
    assert ok(deleted) is None
    assert marks_left(namespace) == [0, FOREIGN]


def test_filters_that_match_nothing_or_everything_are_refused(namespace: str) -> None:
    results = run_table(
        namespace,
        ["delete", 0, 0],  # every entry of the namespace
        ["flows", MARK_A, 0xFF],  # a mark bit outside the mask: nothing could match
        ["count_by_mark", 1 << 32, U32, U32],
        ["count_by_mark", 1, U32, -1],
    )
    assert [r.get("error") for r in results] == ["ValueError"] * 4, results
    assert "mask 0" in results[0]["message"]
    assert len(marks_left(namespace)) == len(ENTRIES) - 1


def test_without_cap_net_admin_every_call_fails_with_a_clear_error(namespace: str) -> None:
    # setpriv empties the bounding and inheritable sets: root keeps no capability at exec.
    no_caps = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]
    results = run_table(
        namespace,
        ["flows", MARK_A, U32],
        ["count_by_mark", MARK_A, U32, U32],
        ["delete", MARK_A, U32],
        ["flows", MARK_A, U32],  # the next call fails the same way, no stale state
        wrapper=no_caps,
    )
    for result in results:
        assert result.get("error") == "ConntrackError", result
        assert "Operation not permitted (needs CAP_NET_ADMIN" in result["message"], result
    assert "cannot delete conntrack entries of mark 0x100001/0xffffffff" in results[2]["message"]
    assert len(marks_left(namespace)) == len(ENTRIES) - 1


def test_a_closed_table_refuses_calls(namespace: str) -> None:
    before, closed, after = run_table(
        namespace, ["flows", MARK_B, U32], ["close"], ["delete", MARK_B, U32]
    )
    assert len(ok(before)) == 1 and ok(closed) is None
    assert after == {
        "error": "ConntrackError",
        "message": "cannot delete conntrack entries of mark 0x100002/0xffffffff: "
        "the conntrack table is closed",
    }
    assert MARK_B in marks_left(namespace)
