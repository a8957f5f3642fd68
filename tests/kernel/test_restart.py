"""50 long TCP transfers through the VIP survive the data-path process dying and coming
back: killed, stopped cleanly, or replaced by another implementation (an upgrade)."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from nfqproxy.lab.servers import blob
from nfqproxy.lab.topology import HTTP_PORT, WEB_VIP
from nfqproxy.lab.traffic import http_slow_download_digest, parallel
from tests.kernel.conftest import DATAPATHS, RunningLab, lab_with_proxy

pytestmark = pytest.mark.kernel
TRANSFERS = 50
SIZE = 3 * 1024 * 1024  # read 32 KiB every 20 ms: about 2 s each


def transfers_across(running: RunningLab, restart: Callable[[], None]) -> list[str]:
    results: list[str] = []
    client = threading.Thread(
        target=lambda: results.extend(
            running.client.call(
                parallel, http_slow_download_digest, TRANSFERS, WEB_VIP, HTTP_PORT, SIZE
            )
        )
    )
    client.start()
    time.sleep(0.7)  # every transfer under way
    restart()
    client.join(60)
    return results


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_kill_9_and_a_restart_in_the_middle_of_50_transfers_breaks_none(datapath: str) -> None:
    with lab_with_proxy("--datapath", datapath) as running:

        def kill_and_restart() -> None:
            assert running.proxy is not None
            os.kill(running.proxy.pid, signal.SIGKILL)
            running.proxy.wait(5)
            running.start_proxy("--datapath", datapath)

        results = transfers_across(running, kill_and_restart)
    expected = hashlib.sha256(blob(SIZE)).hexdigest()
    assert results.count(expected) == TRANSFERS, [r for r in results if r != expected][:3]


@pytest.mark.parametrize(
    ("before", "after"),
    [(DATAPATHS[-1], DATAPATHS[-1]), (DATAPATHS[0], DATAPATHS[-1])],
    ids=["clean-restart", "upgrade"],
)
def test_a_clean_stop_with_keep_hooks_and_a_new_process_break_none_of_50_transfers(
    before: str, after: str
) -> None:
    """The upgrade case hands the flows to another implementation of the data path
    (reference to fast): recovery rests on Maglev's pinned hashing, not on process state."""
    with lab_with_proxy("--datapath", before, "--keep-hooks-on-exit") as running:

        def stop_and_start() -> None:
            assert running.proxy is not None
            running.proxy.send_signal(signal.SIGTERM)
            assert running.proxy.wait(10) == 0
            running.start_proxy("--datapath", after, "--keep-hooks-on-exit")

        results = transfers_across(running, stop_and_start)
        log = (running.lab.dir / "proxy.log").read_text()
        assert "leaving the hook rules for the next process" in log
    expected = hashlib.sha256(blob(SIZE)).hexdigest()
    assert results.count(expected) == TRANSFERS, [r for r in results if r != expected][:3]
