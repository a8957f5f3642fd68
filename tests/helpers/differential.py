"""What the differential tests share: the candidates, and a run of operations that
records everything a data path answers, for two runs to be compared."""

from __future__ import annotations

from typing import Any

import pytest

from nfqproxy.datapath.fast.datapath import fast_path_available
from tests.helpers.clock import FakeClock
from tests.helpers.datapaths import candidate_params
from tests.helpers.snapshots import snapshot

# The fast path's own tests (its C table's size, its CHECKSUM_PARTIAL entry point).
needs_fast = pytest.mark.skipif(not fast_path_available(), reason="the fast path is not built")
# Every data path but the reference, in turn; one that cannot run here is skipped.
each_candidate = pytest.mark.parametrize("candidate", candidate_params())


def run(datapath: Any, clock: FakeClock, ops: list[tuple[str, Any]]) -> list[Any]:
    """Feeds the operations to a data path: ("packet", raw), ("packets", [raw]),
    ("sourced", (source bits, raw)), ("apply", snapshot() arguments), ("apply_snapshot",
    a Snapshot), ("tick", seconds), ("expire", None). Returns each answer, and after each
    operation the flow count, the counters and the session affinity status."""
    trace: list[Any] = []
    for op, arg in ops:
        if op in ("packet", "packets", "sourced"):
            source, packets = (arg[0], [arg[1]]) if op == "sourced" else (0, [arg])
            for packet in packets if op != "packets" else arg:
                v = datapath.process(packet, source)
                trace.append((v.action, v.reason, v.payload, v.proxied, v.masquerade))
        elif op == "apply":
            trace.append(sorted(datapath.apply(snapshot(*arg))))
        elif op == "apply_snapshot":
            trace.append(sorted(datapath.apply(arg)))
        elif op == "tick":
            clock.now += arg
        else:
            trace.append(datapath.expire())
        trace.append(
            (
                len(datapath.flows) if hasattr(datapath, "flows") else len(datapath),
                dict(datapath.counters),
                datapath.status()["session_affinity"],
            )
        )
    return trace
