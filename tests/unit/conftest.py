"""Fixtures of the unit tests: the test clock, and data paths of every implementation.

datapath and make_datapath are parametrised over every data path the factory registers
that sees every packet (nfqproxy.datapath.factory.DATAPATHS, every_packet), so a scenario
written against them runs on each, and on any registered later; one that cannot run here
(the fast path unbuilt) is skipped with the reason.
"""

from __future__ import annotations

import functools

import pytest

from nfqproxy.datapath.interface import Datapath
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import MakeDatapath, datapath_params, new_datapath


@pytest.fixture
def clock() -> FakeClock:
    """The test's clock, at 1000.0 until the test moves it."""
    return FakeClock()


@pytest.fixture(params=datapath_params(every_packet_only=True))
def datapath_name(request: pytest.FixtureRequest) -> str:
    """Each registered data path's name in turn."""
    name: str = request.param
    return name


@pytest.fixture
def make_datapath(datapath_name: str, clock: FakeClock) -> MakeDatapath:
    """Builds data paths of the test's implementation, with the constructors' keyword
    arguments (capacity, timeouts, seed, clock), on the test's clock unless told."""
    return functools.partial(new_datapath, datapath_name, clock=clock)


@pytest.fixture
def datapath(make_datapath: MakeDatapath) -> Datapath:
    """A data path of each implementation in turn, with no service ports, on the test's
    clock."""
    return make_datapath()
