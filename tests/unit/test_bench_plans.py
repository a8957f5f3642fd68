"""What the benchmarks say they would run (--plan): at least 5 rounds by default with the
modes rotated in every one, the offload modes in the comparison (left out, with the reason,
where this nfqproxy lacks the data path), and nfqproxy at its default --min-sync-period.
Run as users run them: tests do not import bench."""

from __future__ import annotations

from nfqproxy import defaults
from tests.helpers.bench import benchmark_plan


def assert_rotated(orders: list[list[str]]) -> None:
    """Round r starts with the mode r mod M of the first round's order, and keeps its cycle."""
    first = orders[0]
    for number, order in enumerate(orders):
        shift = number % len(first)
        assert order == first[shift:] + first[:shift], (number, order)


def test_the_scale_benchmark_runs_5_rotated_rounds_of_every_competitor() -> None:
    found = benchmark_plan("bench")
    assert found["rounds"] >= 5 and found["sizes"] == [100, 1000, 10000]
    sync = f"-sync-{defaults.MIN_SYNC_PERIOD:g}s"
    expected = {"iptables-legacy", "iptables-nft", "nftables", "queue-floor", "fast"}
    expected |= {"offload-1q", "offload-nq"}
    assert expected | {f"fast{sync}", f"offload-1q{sync}"} == set(found["modes"])
    assert "reference" in found["all_modes"] and "reference" not in found["modes"]
    assert found["programming_only"] == [f"fast{sync}", f"offload-1q{sync}"]
    # The first-packet floor's rules change as iptables-legacy's: no change measures.
    assert found["skipped_measures"] == {"queue-floor": ["change_ms", "change_call_ms"]}
    for size, modes in found["modes_by_size"].items():
        at_largest = int(size) == max(found["sizes"])
        assert (f"fast{sync}" in modes) == at_largest, size
        orders = [by_size[size] for by_size in found["order"]]
        assert len(orders) == found["rounds"]
        assert_rotated(orders)
        assert set(orders[0]) == set(modes) - set(found["unavailable"])
    for mode, reason in found["unavailable"].items():
        assert mode.startswith("offload") and "offload" in reason
    assert {"connect_first_us.p50", "connect_middle_us.p50", "connect_last_us.p50"} <= set(
        found["measures"]
    )


def test_a_quick_scale_plan_is_one_round_and_says_what_it_leaves_out() -> None:
    found = benchmark_plan("bench", "--quick", "--sizes", "100", "--modes", "fast", "nftables")
    assert found["rounds"] == 1 and found["throughput_size"] == 100
    assert found["modes"] == ["nftables", "fast"]
    assert "--sizes 100" in found["command"]


def test_the_data_path_benchmark_runs_5_rotated_rounds_of_every_competitor() -> None:
    found = benchmark_plan("bench.datapath")
    assert found["rounds"] >= 5
    expected = ["kernel", "nftables", "ceiling", "ceiling-copy", "fast", "offload-1q", "offload-nq"]
    assert found["modes"] == expected and "reference" in found["all_modes"]
    assert_rotated(found["order"])
    assert set(found["order"][0]) == set(expected) - set(found["unavailable"])
    assert set(found["nfqproxy_modes"]) == {"fast", "offload-1q", "offload-nq"}
    assert {"tcp1", "tcp4", "udp_pps", "udp_loss", "cps", "rss_mb"} <= set(found["measures"])
    quick = benchmark_plan("bench.datapath", "--quick", "--modes", "kernel", "reference")
    assert quick["rounds"] == 1 and quick["modes"] == ["kernel", "reference"]
