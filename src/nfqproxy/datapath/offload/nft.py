"""The offload path's DNAT map in nf_tables: mark -> backend address . port, and the two
fixed nat chains that use it. Programmed through libnftables in this process (ctypes; the
library nft itself is built on), one atomic transaction per sync: no program is started per
element or per sync. docs/design.md ("The offload path") explains the choice.

  table ip nfqproxy
    map backends   { type mark : ipv4_addr . inet_service }
    chain prerouting { type nat hook prerouting priority dstnat + 1 }  pods
    chain output     { type nat hook output priority dstnat + 1 }      the node itself
      meta l4proto { tcp, udp } meta mark & ID_MASK != 0
          dnat ip to meta mark & ID_MASK map @backends

The chains sit just after iptables' nat chains (priority dstnat), where the hooks save the
verdict's mark into the connection's mark (nfqproxy.hooks). Nothing here comes from an
object but validated addresses and numbers.
"""

from __future__ import annotations

import ctypes
import json
import threading
from ipaddress import IPv4Address

from nfqproxy.datapath.marks import MarkLayout

TABLE = "nfqproxy"
MAP = "backends"
# dstnat + 1 (nft 1.0.6 takes the name only inside a table block): after iptables' nat.
PRIORITY = -99
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON in libnftables.h

Backend = tuple[bytes, int]  # packed IPv4 address, port
# An element: the backend, and the service port it serves there, as the element's comment
# ("10.96.0.10:80/6"), so that a restarted process learns every id's owner from the map.
Element = tuple[Backend, tuple[bytes, int, int]]


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


def table_commands(marks: MarkLayout) -> str:
    """Creates the table, the map and the chains if missing and sets the chains' rules;
    the map's elements are left as they are (a restart keeps them)."""
    ids = f"{marks.id_mask:#010x}"
    rule = (
        f"meta l4proto {{ tcp, udp }} meta mark & {ids} != 0 "
        f"dnat ip to meta mark & {ids} map @{MAP}"
    )
    lines = [
        f"add table ip {TABLE}",
        f"add map ip {TABLE} {MAP} {{ type mark : ipv4_addr . inet_service; }}",
    ]
    for chain, hook in (("prerouting", "prerouting"), ("output", "output")):
        lines += [
            f"add chain ip {TABLE} {chain} "
            f"{{ type nat hook {hook} priority {PRIORITY}; policy accept; }}",
            f"flush chain ip {TABLE} {chain}",
            f"add rule ip {TABLE} {chain} {rule}",
        ]
    return "\n".join(lines) + "\n"


def owner_comment(key: tuple[bytes, int, int]) -> str:
    vip, proto, port = key
    return f"{IPv4Address(vip)}:{int(port)}/{int(proto)}"


def parse_owner(comment: str) -> tuple[bytes, int, int] | None:
    """owner_comment's inverse; None for anything else (an element not ours, say)."""
    try:
        address, rest = comment.split(":", 1)
        port, proto = rest.split("/", 1)
        return IPv4Address(address).packed, int(proto), int(port)
    except ValueError:
        return None


def _element(mark: int, element: Element | None = None) -> str:
    if element is None:
        return f"{mark:#010x}"
    (ip, port), owner = element
    if not 0 < port < 65536:
        raise ValueError(f"backend port {port} is out of range")
    return f'{mark:#010x} comment "{owner_comment(owner)}" : {IPv4Address(ip)} . {port}'


def update_commands(added: dict[int, Element], removed: list[int]) -> str:
    """One transaction: the elements removed, then those added, by mark."""
    lines = []
    if removed:
        lines.append(f"delete element ip {TABLE} {MAP} {{ {', '.join(map(_element, removed))} }}")
    if added:
        items = ", ".join(_element(mark, element) for mark, element in sorted(added.items()))
        lines.append(f"add element ip {TABLE} {MAP} {{ {items} }}")
    return "\n".join(lines) + "\n" if lines else ""


class BackendMap:
    """The kernel's copy of mark -> backend; `current` mirrors what it holds."""

    def __init__(self, marks: MarkLayout) -> None:
        self.marks = marks
        self._nft = _Libnftables()
        self._lock = threading.Lock()
        self.current: dict[int, Element] = {}

    def install(self) -> dict[int, Element]:
        """Makes sure the table is there and returns the elements it already holds (left
        by a previous process: their marks may still be in conntrack entries)."""
        self._nft.run(table_commands(self.marks))
        listing = json.loads(self._nft.run(f"list map ip {TABLE} {MAP}", as_json=True))
        self.current = {}
        unowned = (b"\0\0\0\0", 0, 0)  # not written by us: replaced at the first sync
        for item in listing.get("nftables", []):
            for key, value in item.get("map", {}).get("elem", []):
                if isinstance(key, dict):  # an element with a comment
                    mark, owner = key["elem"]["val"], parse_owner(key["elem"].get("comment", ""))
                else:
                    mark, owner = key, None
                address, port = value["concat"]
                backend = (IPv4Address(address).packed, int(port))
                self.current[int(mark)] = (backend, owner or unowned)
        return dict(self.current)

    def update(self, added: dict[int, Element], removed: list[int]) -> None:
        """Adds and removes elements in one transaction: all or nothing. Syncs add and the
        settling thread removes: one at a time."""
        with self._lock:
            self._update(added, removed)

    def _update(self, added: dict[int, Element], removed: list[int]) -> None:
        added = {m: b for m, b in added.items() if self.current.get(m) != b}
        # A mark that names another backend now (a restart's leftovers) is replaced.
        removed = [m for m in {*removed, *added} if m in self.current]
        commands = update_commands(added, removed)
        if not commands:
            return
        self._nft.run(commands)
        for mark in removed:
            del self.current[mark]
        self.current.update(added)

    def close(self) -> None:
        self._nft.close()


def delete_table_commands() -> str:
    return f"delete table ip {TABLE}\n"


def remove_table() -> bool:
    """Deletes the table (`nfqproxy cleanup`, a clean exit); False if it was not there."""
    nft = _Libnftables()
    try:
        listing = nft.run("list tables ip", as_json=True)
        if f'"name": "{TABLE}"' not in listing.replace('"name":"', '"name": "'):
            return False
        nft.run(delete_table_commands())
        return True
    finally:
        nft.close()
