"""Fixtures for tests in real network namespaces, with real iptables and NFQUEUE.

The labs and proxies themselves are made by tests.helpers.labs, which test modules import;
this file keeps only fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from nfqproxy_lab.topology import Lab
from tests.helpers.datapaths import datapath_params
from tests.helpers.labs import RunningLab, lab_with_proxy, new_lab

if os.geteuid() != 0:
    pytest.skip("kernel tests need root", allow_module_level=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab without a proxy."""
    lab = new_lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module", params=datapath_params())
def running_lab(request: pytest.FixtureRequest) -> Iterator[RunningLab]:
    """One lab and proxy per data path (every one the factory registers and this machine
    can run), shared by a module's tests, which leave it as it was."""
    with lab_with_proxy("--datapath", request.param) as running:
        yield running


@pytest.fixture
def fresh_lab() -> Iterator[RunningLab]:
    """A lab and proxy of the test's own, for tests that change or stop them."""
    with lab_with_proxy() as running:
        yield running
