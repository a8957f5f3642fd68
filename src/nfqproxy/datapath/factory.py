"""`--datapath NAME` to a data path and its queue binding: the one place that knows the
implementations. A new data path registers here and inherits every test parametrised over
DATAPATHS: the unit scenarios, the golden scenarios and the kernel tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, cast

from nfqproxy import defaults
from nfqproxy.datapath.flows import Timeouts
from nfqproxy.datapath.interface import Datapath, QueueBinding
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.model import IPNetwork


@dataclass(frozen=True)
class DatapathSettings:
    service_cidrs: tuple[IPNetwork, ...]
    flow_capacity: int = defaults.FLOW_CAPACITY
    seed: int = defaults.SEED
    fail_open: bool = False  # a full queue passes packets unproxied (where supported)
    timeouts: Timeouts = field(default_factory=Timeouts)
    clock: Callable[[], float] = time.monotonic  # tests pass a clock they move by hand
    marks: MarkLayout = field(default_factory=MarkLayout)  # --mark-mask
    queues: int | None = None  # --queues; None: the implementation's default


@dataclass(frozen=True)
class Implementation:
    datapath: Callable[[DatapathSettings], Datapath]
    binding: Callable[[Datapath, DatapathSettings, int], QueueBinding]
    available: Callable[[], bool] = lambda: True
    unavailable_reason: Callable[[], str] = lambda: "it is not built"
    fail_open: bool = False  # whether its binding can let a full queue's packets through
    # Whether it sees every packet of a flow (and rewrites it), or only the first (offload):
    # the hooks differ, and so do the tests that look at rewritten packets.
    every_packet: bool = True
    max_queues: int = 1  # queues it can spread over; 1: one (replies must find their flow)
    families: frozenset[int] = frozenset({4})  # the IP versions it parses and rewrites
    protocols: frozenset[int] = frozenset({6, 17})  # the transports it proxies (IANA numbers)


class DatapathClass(Protocol):
    """The constructor every implementation has."""

    def __call__(
        self,
        service_cidrs: Iterable[IPNetwork],
        capacity: int,
        timeouts: Timeouts | None,
        seed: int,
        clock: Callable[[], float],
    ) -> Datapath: ...


def _construct(kind: DatapathClass, settings: DatapathSettings) -> Datapath:
    return kind(
        settings.service_cidrs,
        settings.flow_capacity,
        settings.timeouts,
        settings.seed,
        settings.clock,
    )


def _reference_datapath(settings: DatapathSettings) -> Datapath:
    from nfqproxy.datapath.reference.datapath import ReferenceDatapath

    return _construct(ReferenceDatapath, settings)


def _reference_binding(
    datapath: Datapath, settings: DatapathSettings, queue_num: int
) -> QueueBinding:
    from nfqproxy.datapath.reference.queue import NetfilterQueueBinding

    return NetfilterQueueBinding(queue_num, datapath, settings.marks)


def _fast_datapath(settings: DatapathSettings) -> Datapath:
    from nfqproxy.datapath.fast.datapath import FastDatapath

    return _construct(FastDatapath, settings)


def _fast_binding(datapath: Datapath, settings: DatapathSettings, queue_num: int) -> QueueBinding:
    from nfqproxy.datapath.fast.datapath import FastDatapath
    from nfqproxy.datapath.fast.queue import FastQueueBinding

    # Its queue loop runs in C on the data path's own tables.
    return FastQueueBinding(
        queue_num, cast(FastDatapath, datapath), settings.marks, settings.fail_open
    )


def _offload_datapath(settings: DatapathSettings) -> Datapath:
    from nfqproxy.datapath.offload.datapath import OffloadDatapath

    return _construct(OffloadDatapath, settings)


def _offload_binding(
    datapath: Datapath, settings: DatapathSettings, queue_num: int
) -> QueueBinding:
    from nfqproxy.datapath.offload.datapath import OffloadDatapath
    from nfqproxy.datapath.offload.queue import OffloadQueueBinding

    return OffloadQueueBinding(
        queue_num,
        cast(OffloadDatapath, datapath),
        settings.marks,
        queues_for("offload", settings.queues),
        settings.fail_open,
    )


def _fast_available() -> bool:
    from nfqproxy.datapath.fast.datapath import fast_path_available

    return fast_path_available()


def _fast_unavailable_reason() -> str:
    from nfqproxy.datapath.fast.datapath import unavailable_reason

    return unavailable_reason()


# By name, in the order of preference: the first available one is the default.
DATAPATHS: dict[str, Implementation] = {
    # The default where built: every packet seen, counted and changeable in userspace,
    # nfqproxy's reason to be. Offload trades that for kernel throughput (README,
    # "Choosing a data path"); moving a running node between the two resets its open
    # flows, so it is chosen, not defaulted to.
    "fast": Implementation(
        _fast_datapath,
        _fast_binding,
        _fast_available,
        _fast_unavailable_reason,
        fail_open=True,
        families=frozenset({4, 6}),
        protocols=frozenset({6, 17, 132}),
    ),
    "offload": Implementation(
        _offload_datapath,
        _offload_binding,
        _fast_available,
        _fast_unavailable_reason,
        fail_open=True,
        every_packet=False,
        max_queues=65536,
        families=frozenset({4, 6}),
        protocols=frozenset({6, 17, 132}),
    ),
    "reference": Implementation(
        _reference_datapath,
        _reference_binding,
        families=frozenset({4, 6}),
        protocols=frozenset({6, 17, 132}),
    ),
}


def serving_family(version: int) -> list[str]:
    """The data paths that parse and rewrite this IP version."""
    return [
        name for name, implementation in DATAPATHS.items() if version in implementation.families
    ]


def queues_for(name: str, asked: int | None) -> int:
    """--queues for a data path: as asked, else one per CPU where it can spread, else 1."""
    implementation = _implementation(name)
    if asked is None:
        return min(os.cpu_count() or 1, implementation.max_queues)
    if not 1 <= asked <= implementation.max_queues:
        raise ValueError(
            f"--queues {asked}: the {name} data path takes 1"
            + (f"-{implementation.max_queues}" if implementation.max_queues > 1 else "")
            + " (replies must reach the queue that holds their flow)"
            * (implementation.max_queues == 1)
        )
    return asked


def available() -> list[str]:
    """The data paths this installation can run (the fast one needs its extension)."""
    return [name for name, implementation in DATAPATHS.items() if implementation.available()]


def unavailable_reason(name: str) -> str:
    return _implementation(name).unavailable_reason()


def default_datapath() -> str:
    """Fast when built, unless NFQPROXY_NO_EXTENSIONS=1 is set; else the reference."""
    return available()[0]


def _implementation(name: str) -> Implementation:
    if name not in DATAPATHS:
        raise ValueError(f"unknown data path {name!r}; choose one of {', '.join(DATAPATHS)}")
    return DATAPATHS[name]


def build_datapath(name: str, settings: DatapathSettings) -> Datapath:
    """The data path alone, with no queue: for tests and benchmarks that feed it packets."""
    return _implementation(name).datapath(settings)


def build(name: str, settings: DatapathSettings, queue_num: int) -> tuple[Datapath, QueueBinding]:
    """The data path and the binding that feeds it from NFQUEUE queue_num (not yet bound)."""
    implementation = _implementation(name)
    if settings.fail_open and not implementation.fail_open:
        with_it = [n for n, i in DATAPATHS.items() if i.fail_open]
        raise ValueError(
            f"--fail-open is not supported by the {name} data path; it is by: {', '.join(with_it)}"
        )
    datapath = implementation.datapath(settings)
    return datapath, implementation.binding(datapath, settings, queue_num)
