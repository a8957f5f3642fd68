"""Every data path the factory registers, built by name, for the tests that run on each.

A data path registered in nfqproxy.datapath.factory.DATAPATHS is found here with no change
to the tests: unit scenarios take it through the fixtures of tests/unit/conftest.py
(datapath, make_datapath), kernel scenarios through DATAPATHS below.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import pytest

from nfqproxy import defaults
from nfqproxy.datapath import factory
from nfqproxy.datapath.factory import DatapathSettings
from nfqproxy.datapath.flows import Timeouts
from nfqproxy.datapath.interface import Datapath
from nfqproxy.model import IPNetwork

# Flows a test's data path holds unless it asks for more: the proxy's default (1M, 56 MB on
# the fast path) would cost every test 20 ms to allocate.
TEST_CAPACITY = 4096

# The executable specification: what golden scenario files are written from.
REFERENCE = "reference"

# Every registered name, from the least preferred (the reference, the specification) to
# the most: a test that hands flows from one implementation to another goes this way.
NAMES: list[str] = list(reversed(factory.DATAPATHS))

# The names that can run on this machine, in the same order: for a test that needs two,
# such as an upgrade from one to another. Scenario tests parametrise over datapath_params()
# instead, which lists the others as skipped, with the reason.
DATAPATHS: list[str] = [name for name in NAMES if name in factory.available()]


def new_datapath(
    name: str,
    *,
    capacity: int = TEST_CAPACITY,
    timeouts: Timeouts | None = None,
    seed: int = defaults.SEED,
    clock: Callable[[], float] = time.monotonic,
    service_cidrs: Iterable[IPNetwork] = defaults.SERVICE_CIDRS,
) -> Datapath:
    """A data path of that name with no service ports, on the clock given."""
    settings = DatapathSettings(
        tuple(service_cidrs), capacity, seed, timeouts=timeouts or Timeouts(), clock=clock
    )
    return factory.build_datapath(name, settings)


# The data paths that see and rewrite every packet of a flow: the unit scenarios that feed
# whole flows packet by packet run on these. The offload path sees a flow's first packet
# only (the kernel carries the rest); its unit tests compare its decisions with the fast
# path's (tests/unit/test_offload.py), and every kernel scenario runs on it.
EVERY_PACKET: list[str] = [name for name in NAMES if factory.DATAPATHS[name].every_packet]


def datapath_params(*, every_packet_only: bool = False) -> list[Any]:
    """One pytest parameter per registered data path; those that cannot run here are
    skipped with the reason, not left out, so that a missing build shows in the summary.
    every_packet_only: only the data paths that rewrite every packet of a flow."""
    usable = factory.available()
    names = EVERY_PACKET if every_packet_only else NAMES
    return [
        pytest.param(
            name,
            id=name,
            marks=pytest.mark.skipif(
                name not in usable,
                reason=f"the {name} data path is not available here (factory.available() is "
                f"{usable}): the fast one needs its extension, without NFQPROXY_NO_EXTENSIONS=1",
            ),
        )
        for name in names
    ]


def candidate_params() -> list[Any]:
    """The packet-level data paths but the reference: those compared with it packet by
    packet."""
    return [param for param in datapath_params(every_packet_only=True) if param.id != REFERENCE]


def status_section(datapath: Datapath, name: str) -> dict[str, Any]:
    """A section of the data path's status: connection_table, session_affinity, counters."""
    section = datapath.status()[name]
    assert isinstance(section, dict), section
    return section


def flow_count(datapath: Datapath) -> int:
    """Flows in the connection table, as every implementation's status tells it."""
    return int(status_section(datapath, "connection_table")["flows"])


class MakeDatapath(Protocol):
    """The make_datapath fixture: a data path of the test's implementation."""

    def __call__(
        self,
        *,
        capacity: int = ...,
        timeouts: Timeouts | None = ...,
        seed: int = ...,
        clock: Callable[[], float] = ...,
        service_cidrs: Iterable[IPNetwork] = ...,
    ) -> Datapath: ...
