"""The offload path's DNAT maps in nf_tables: mark -> backend address . port, and the two
fixed nat chains that use them, one table per IP family served. Programmed through
libnftables in this process (ctypes; the library nft itself is built on), one atomic
transaction per sync: no program is started per element or per sync. docs/design.md ("The
offload path") explains the choice.

  table ip nfqproxy                       (IPv4 service ranges)
    map backends   { type mark : ipv4_addr . inet_service }
    chain prerouting { type nat hook prerouting priority dstnat + 1 }  pods
    chain output     { type nat hook output priority dstnat + 1 }      the node itself
      meta l4proto { tcp, udp, sctp } meta mark & ID_MASK != 0
          dnat ip to meta mark & ID_MASK map @backends
  table ip6 nfqproxy                      (IPv6 service ranges: the same, ipv6_addr, dnat ip6)

Two tables of one family each, not one inet table with two maps: the IPv4 table stays as
it was, so a process of this version adopts the map an older one left (its connections'
marks name its elements). Backend ids are one space over both families, so a mark is in
one map at most. The chains sit just after iptables' nat chains (priority dstnat), where
the hooks save the verdict's mark into the connection's mark (nfqproxy.hooks). Nothing
here comes from an object but validated addresses and numbers: nft would resolve a host
name it is given.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from nfqproxy.datapath.marks import MarkLayout

TABLE = "nfqproxy"
MAP = "backends"
# dstnat + 1 (nft 1.0.6 takes the name only inside a table block): after iptables' nat.
PRIORITY = -99
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON in libnftables.h
U32 = 0xFFFF_FFFF
# SCTP is matched too: no verdict marks it before the compiled core decides it, and
# conntrack NAT rewrites its ports (nf_nat_proto) as it does TCP's and UDP's.
L4PROTOS = "tcp, udp, sctp"

Backend = tuple[bytes, int]  # packed address (4 or 16 bytes), port
# An element: the backend, and the service port it serves there, as the element's comment
# ("10.96.0.10:80/6", "[fd00::10]:80/6"), so that a restarted process learns every id's
# owner from the map.
Element = tuple[Backend, tuple[bytes, int, int]]


@dataclass(frozen=True)
class Family:
    """One IP version as nft names it: the table's family (also the dnat statement's), and
    the map's address type."""

    name: str
    address_type: str


FAMILIES = {4: Family("ip", "ipv4_addr"), 6: Family("ip6", "ipv6_addr")}
# The owner of an element with no comment (not written by us): replaced at the first sync.
_UNOWNED = {4: (bytes(4), 0, 0), 6: (bytes(16), 0, 0)}


class NftError(RuntimeError):
    pass


class _Libnftables:
    """One libnftables context; calls are serialised (the library is not thread-safe)."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise NftError(
                f"cannot load libnftables ({exc}); "
                "install nftables (scripts/install-system-deps.sh)"
            ) from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("cannot create a libnftables context")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, commands: str, as_json: bool = False) -> str:
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, _OUTPUT_JSON if as_json else 0)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
            output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise NftError(f"nft refused the transaction: {error.strip() or f'error {rc}'}")
        return output

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


def _family(version: int) -> Family:
    if version not in FAMILIES:
        raise ValueError(f"IP version {version!r} is neither 4 nor 6")
    return FAMILIES[version]


def _listing(nft: _Libnftables, command: str) -> dict[str, Any]:
    """A JSON listing; no output reads as an empty one."""
    parsed: dict[str, Any] = json.loads(nft.run(command, as_json=True) or "{}")
    return parsed


def _number(name: str, value: int, low: int, high: int) -> int:
    # bool is an int: refused, as any other value that is not a plain number in range.
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} {value!r} is not a number in {low}-{high}")
    return value


def _address(packed: bytes) -> IPv4Address | IPv6Address:
    if not isinstance(packed, bytes) or len(packed) not in (4, 16):
        raise ValueError(f"{packed!r} is not a packed IPv4 or IPv6 address")
    return ip_address(packed)


def table_commands(marks: MarkLayout, version: int = 4) -> str:
    """Creates the family's table, map and chains if missing and sets the chains' rules;
    the map's elements are left as they are (a restart keeps them)."""
    family = _family(version)
    ids = f"{_number('id mask', marks.id_mask, 1, U32):#010x}"
    rule = (
        f"meta l4proto {{ {L4PROTOS} }} meta mark & {ids} != 0 "
        f"dnat {family.name} to meta mark & {ids} map @{MAP}"
    )
    table = f"{family.name} {TABLE}"
    lines = [
        f"add table {table}",
        f"add map {table} {MAP} {{ type mark : {family.address_type} . inet_service; }}",
    ]
    for chain, hook in (("prerouting", "prerouting"), ("output", "output")):
        lines += [
            f"add chain {table} {chain} "
            f"{{ type nat hook {hook} priority {PRIORITY}; policy accept; }}",
            f"flush chain {table} {chain}",
            f"add rule {table} {chain} {rule}",
        ]
    return "\n".join(lines) + "\n"


def owner_comment(key: tuple[bytes, int, int]) -> str:
    """The element comment naming a service port: 10.96.0.10:80/6, or [fd00::10]:80/6 (an
    IPv6 address in brackets, as in a URL, so that the port's colon stays apart)."""
    vip, proto, port = key
    address = _address(vip)
    # The protocol may carry the cluster variant's bit (frontends.VARIANT_CLUSTER).
    proto = _number("protocol", proto, 0, 0xFFFF)
    port = _number("service port", port, 0, 65535)
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{host}:{port}/{proto}"


def parse_owner(comment: str) -> tuple[bytes, int, int] | None:
    """owner_comment's inverse; None for anything else (an element not ours, say)."""
    if "%" in comment:  # ipaddress would take a zone (fe80::1%eth0); ours never have one
        return None
    try:
        if comment.startswith("["):
            address, rest = comment[1:].split("]:", 1)
            parsed: IPv4Address | IPv6Address = IPv6Address(address)
        else:
            address, rest = comment.split(":", 1)
            parsed = IPv4Address(address)
        port, proto = rest.split("/", 1)
        return (
            parsed.packed,
            _number("protocol", int(proto), 0, 0xFFFF),
            _number("service port", int(port), 0, 65535),
        )
    except ValueError:
        return None


def element_version(element: Element) -> int:
    """The element's IP family: its backend's, which must be its service port's."""
    (ip, _port), (vip, _proto, _service_port) = element
    version = _address(ip).version
    if _address(vip).version != version:
        raise ValueError(
            f"backend {_address(ip)} is not of the family of its service port's {_address(vip)}"
        )
    return version


def _element(mark: int, element: Element | None = None) -> str:
    mark = _number("mark", mark, 1, U32)
    if element is None:
        return f"{mark:#010x}"
    (ip, port), owner = element
    port = _number("backend port", port, 1, 65535)
    return f'{mark:#010x} comment "{owner_comment(owner)}" : {_address(ip)} . {port}'


def update_commands(added: Mapping[int, Element], removed: Mapping[int, Element]) -> str:
    """One transaction: the elements removed (as the maps hold them), then those added, by
    mark, each in the map of its family."""
    lines = []
    for verb, elements, with_values in (("delete", removed, False), ("add", added, True)):
        for version, family in FAMILIES.items():
            items = [
                _element(mark, element if with_values else None)
                for mark, element in sorted(elements.items())
                if element_version(element) == version
            ]
            if items:
                where = f"{family.name} {TABLE} {MAP}"
                lines.append(f"{verb} element {where} {{ {', '.join(items)} }}")
    return "\n".join(lines) + "\n" if lines else ""


def parse_map(listing: Mapping[str, Any], version: int) -> dict[int, Element]:
    """The elements of a map as libnftables lists it in JSON (`list map`), by mark."""
    _family(version)
    elements: dict[int, Element] = {}
    for item in listing.get("nftables", []):
        for key, value in item.get("map", {}).get("elem", []):
            if isinstance(key, dict):  # an element with a comment
                mark, owner = key["elem"]["val"], parse_owner(key["elem"].get("comment", ""))
            else:
                mark, owner = key, None
            address, port = value["concat"]
            ip = ip_address(address)
            if ip.version != version:
                raise NftError(f"the {FAMILIES[version].name} map holds {address}")
            if owner is not None and len(owner[0]) != len(ip.packed):
                owner = None  # a comment of the other family is not ours to trust
            elements[int(mark)] = ((ip.packed, int(port)), owner or _UNOWNED[version])
    return elements


def parse_tables(listing: Mapping[str, Any]) -> set[int]:
    """The IP versions whose table of ours a JSON `list tables` shows."""
    by_name = {family.name: version for version, family in FAMILIES.items()}
    found = set()
    for item in listing.get("nftables", []):
        table = item.get("table", {})
        if table.get("name") == TABLE and table.get("family") in by_name:
            found.add(by_name[table["family"]])
    return found


def delete_table_commands(versions: Collection[int] = (4,)) -> str:
    return "".join(f"delete table {_family(v).name} {TABLE}\n" for v in sorted(versions))


class BackendMap:
    """The kernel's copy of mark -> backend, over the maps of the families served;
    `current` mirrors what they hold."""

    def __init__(self, marks: MarkLayout, families: Collection[int] = (4,)) -> None:
        self.marks = marks
        self.families = frozenset(families)
        for version in self.families:
            _family(version)  # refuses anything but 4 and 6
        if not self.families:
            raise ValueError("the offload path serves at least one IP family")
        self._nft = _Libnftables()
        self._lock = threading.Lock()
        self.current: dict[int, Element] = {}

    def install(self) -> dict[int, Element]:
        """Makes sure the tables of the families served are there and returns the elements
        they already hold (left by a previous process: their marks may still be in
        conntrack entries). The table of a family no longer served goes: nothing queues
        that family any more, and its open connections keep their NAT in conntrack."""
        present = parse_tables(_listing(self._nft, "list tables"))
        commands = delete_table_commands(present - self.families)
        commands += "".join(table_commands(self.marks, v) for v in sorted(self.families))
        self._nft.run(commands)
        self.current = {}
        for version in sorted(self.families):
            family = FAMILIES[version].name
            listing = _listing(self._nft, f"list map {family} {TABLE} {MAP}")
            self.current.update(parse_map(listing, version))
        return dict(self.current)

    def update(self, added: dict[int, Element], removed: list[int]) -> None:
        """Adds and removes elements in one transaction: all or nothing. Syncs add and the
        settling thread removes: one at a time."""
        with self._lock:
            self._update(added, removed)

    def _update(self, added: dict[int, Element], removed: list[int]) -> None:
        added = {m: b for m, b in added.items() if self.current.get(m) != b}
        for element in added.values():
            if element_version(element) not in self.families:
                raise ValueError(
                    f"backend {_address(element[0][0])}: its family has no map here "
                    "(no service range of it)"
                )
        # A mark that names another backend now (a restart's leftovers) is replaced.
        gone = {m: self.current[m] for m in {*removed, *added} if m in self.current}
        commands = update_commands(added, gone)
        if not commands:
            return
        self._nft.run(commands)
        for mark in gone:
            del self.current[mark]
        self.current.update(added)

    def close(self) -> None:
        self._nft.close()


def remove_table() -> bool:
    """Deletes the tables of both families (`nfqproxy cleanup`, a clean exit), whichever
    are there; False if neither was."""
    nft = _Libnftables()
    try:
        present = parse_tables(_listing(nft, "list tables"))
        if not present:
            return False
        nft.run(delete_table_commands(present))
        return True
    finally:
        nft.close()
