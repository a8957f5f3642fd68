"""`--datapath NAME` to a data path and its queue binding: the one place that knows the
implementations. A new data path registers here and inherits every test parametrised over
DATAPATHS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network

from nfqproxy import defaults
from nfqproxy.datapath.interface import Datapath, QueueBinding


@dataclass(frozen=True)
class DatapathSettings:
    service_cidrs: tuple[IPv4Network, ...]
    flow_capacity: int = defaults.FLOW_CAPACITY
    seed: int = 0
    fail_open: bool = False  # a full queue passes packets unproxied (where supported)


def _reference(settings: DatapathSettings, queue_num: int) -> tuple[Datapath, QueueBinding]:
    if settings.fail_open:
        raise ValueError("--fail-open needs the fast data path (--datapath fast)")
    from nfqproxy.datapath.reference.datapath import ReferenceDatapath
    from nfqproxy.datapath.reference.queue import NetfilterQueueBinding

    datapath = ReferenceDatapath(settings.service_cidrs, settings.flow_capacity, seed=settings.seed)
    return datapath, NetfilterQueueBinding(queue_num, datapath)


def _fast(settings: DatapathSettings, queue_num: int) -> tuple[Datapath, QueueBinding]:
    from nfqproxy.datapath.fast.datapath import FastDatapath
    from nfqproxy.datapath.fast.queue import FastQueueBinding

    datapath = FastDatapath(settings.service_cidrs, settings.flow_capacity, seed=settings.seed)
    return datapath, FastQueueBinding(queue_num, datapath, settings.fail_open)


def _fast_available() -> bool:
    from nfqproxy.datapath.fast.datapath import fast_path_available

    return fast_path_available()


Builder = Callable[[DatapathSettings, int], tuple[Datapath, QueueBinding]]

# name -> (builder, whether it can run here), in the order of preference.
DATAPATHS: dict[str, tuple[Builder, Callable[[], bool]]] = {
    "fast": (_fast, _fast_available),
    "reference": (_reference, lambda: True),
}


def available() -> list[str]:
    """The data paths this installation can run (the fast one needs its extension)."""
    return [name for name, (_, usable) in DATAPATHS.items() if usable()]


def default_datapath() -> str:
    """The first available in DATAPATHS' order: fast when built, unless
    NFQPROXY_NO_EXTENSIONS=1."""
    return available()[0]


def build(name: str, settings: DatapathSettings, queue_num: int) -> tuple[Datapath, QueueBinding]:
    if name not in DATAPATHS:
        raise ValueError(f"unknown data path {name!r}; choose one of {', '.join(DATAPATHS)}")
    builder, _ = DATAPATHS[name]
    return builder(settings, queue_num)
