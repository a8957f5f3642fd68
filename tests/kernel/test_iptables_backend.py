"""--iptables auto against real back ends, in namespaces of the test's own: the kubelet's
hint chain in nft, or more rules in legacy, decide it."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nfqproxy
from nfqproxy_lab import netns

pytestmark = pytest.mark.kernel
_numbers = itertools.count()
SRC = str(Path(nfqproxy.__file__).resolve().parents[1])  # the tree the child imports
DETECT = "from nfqproxy.iptables_backend import detect; print(detect()[0])"


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"t{os.getpid() % 10000}ipt{next(_numbers)}"
    try:
        netns.add(name)
        yield name
    finally:
        netns.delete(name)


def detected(namespace: str) -> str:
    command = ["env", f"PYTHONPATH={SRC}", sys.executable, "-c", DETECT]
    return netns.run(netns.exec_command(namespace, command)).strip()


def test_a_bare_namespace_takes_nft(namespace: str) -> None:
    assert detected(namespace) == "iptables-nft"


def test_legacy_rules_take_legacy_and_the_kubelets_nft_hint_takes_nft(namespace: str) -> None:
    for port in (1, 2, 3):
        rule = ["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"]
        netns.run(netns.exec_command(namespace, rule))
    assert detected(namespace) == "iptables-legacy"
    netns.run(
        netns.exec_command(namespace, ["iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"])
    )
    assert detected(namespace) == "iptables-nft"
