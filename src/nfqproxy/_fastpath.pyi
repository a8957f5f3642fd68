# Stub for the compiled cext/fastpath.pyx.
from array import array

ACTION_NAMES: tuple[str, ...]
REASON_NAMES: tuple[str, ...]
STATE_NAMES: tuple[str, ...]

FlowTuple = tuple[int, bytes, int, bytes, int, bytes, int, str, float]

class FastCore:
    ip_options: int
    evicted: int
    expired: int
    udp_resteered: int
    tcp_retired: int
    affinity_hits: int
    affinity_full: int
    @property
    def affinity_clients(self) -> int: ...
    @property
    def affinity_limit(self) -> int: ...
    def __init__(
        self, ranges: list[tuple[int, int]], capacity: int, timeouts: tuple[float, ...], seed: int
    ) -> None: ...
    def set_frontend(
        self,
        slot: int,
        vip: int,
        proto: int,
        port: int,
        backends: list[tuple[bytes, int]],
        table: array[int],
        affinity_timeout: float = 0,
        draining: list[tuple[bytes, int]] | None = None,
        drop_when_empty: bool = False,
    ) -> None: ...
    def remove_frontend(self, slot: int) -> None: ...
    def rebuild_maps(self) -> None: ...
    def retire_flows_to_removed_backends(self, now: float) -> None: ...
    def process(
        self, raw: bytes, now: float, partial: bool = False
    ) -> tuple[str, str, bytes | None, bool, bool]: ...
    def expire(self, now: float) -> int: ...
    def __len__(self) -> int: ...
    def counters(self) -> dict[str, int]: ...
    def flows(self) -> list[FlowTuple]: ...
    def state_counts(self) -> dict[str, int]: ...
    @staticmethod
    def bytes_per_flow() -> int: ...

class FastQueue:
    def __init__(
        self,
        core: FastCore,
        queue_num: int,
        max_len: int,
        mark_proxied: int,
        mark_reject: int,
        mark_hairpin: int,
        fail_open: bool = False,
    ) -> None: ...
    @property
    def fileno(self) -> int: ...
    def open(self) -> None: ...
    def close(self) -> None: ...
    def drain(self) -> int: ...
    def stats(self) -> dict[str, int]: ...
