"""The change tracker: per-object reports in, only the frontends that changed out."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from ipaddress import IPv4Network, ip_address
from typing import Any

import pytest

from nfqproxy.model import Backend, parse_endpoint_slice
from nfqproxy.tracker import TRIGGER_TIME_ANNOTATION, ChangeTracker
from tests.helpers.clock import FakeClock
from tests.helpers.objects import endpoint_slice, report, service

CIDRS = [IPv4Network("10.96.0.0/12")]


def frontend(vip: str, port: int = 80) -> tuple[Any, str, int]:
    return (ip_address(vip), "TCP", port)


def backends(tracker: ChangeTracker, vip: str) -> list[str]:
    return [b.name for b in tracker.ports[frontend(vip)].backends]


def test_one_endpoint_change_among_many_services_parses_and_returns_only_that_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracker = ChangeTracker(CIDRS)
    for i in range(500):
        vip = f"10.96.{i // 250}.{i % 250 + 1}"
        report(tracker, service(f"s{i}", vip), endpoint_slice(f"s{i}-a", f"s{i}", "10.1.0.1"))
    assert len(tracker.flush().ports) == 500

    parsed: list[str] = []

    def counting(obj: Any) -> Any:
        parsed.append(obj["metadata"]["name"])
        return parse_endpoint_slice(obj)

    monkeypatch.setattr("nfqproxy.tracker.parse_endpoint_slice", counting)
    report(tracker, endpoint_slice("s7-a", "s7", "10.1.0.1", "10.1.0.2"))
    changes = tracker.flush()
    assert parsed == ["s7-a"]
    assert list(changes.ports) == [frontend("10.96.0.8")]
    assert backends(tracker, "10.96.0.8") == ["10.1.0.1:8080", "10.1.0.2:8080"]
    assert tracker.flush().ports == {}  # nothing reported, nothing to do


def test_only_the_latest_report_of_an_object_counts() -> None:
    tracker = ChangeTracker(CIDRS)
    report(tracker, service("web", "10.96.0.10"))
    for address in ("10.1.0.1", "10.1.0.2", "10.1.0.3"):
        report(tracker, endpoint_slice("web-a", "web", address))
    tracker.flush()
    assert backends(tracker, "10.96.0.10") == ["10.1.0.3:8080"]


def test_deletions_empty_a_frontend_or_remove_it() -> None:
    tracker = ChangeTracker(CIDRS)
    report(tracker, service("web", "10.96.0.10"), endpoint_slice("web-a", "web", "10.1.0.1"))
    tracker.flush()
    tracker.slice_changed(("shop", "web-a"), None)
    changes = tracker.flush()
    port = changes.ports[frontend("10.96.0.10")]
    assert port is not None and port.backends == ()  # still served: new flows are refused
    tracker.service_changed(("shop", "web"), None)
    assert tracker.flush().ports == {frontend("10.96.0.10"): None}
    assert tracker.ports == {}


def test_a_slice_moving_to_another_service_updates_both() -> None:
    tracker = ChangeTracker(CIDRS)
    report(
        tracker,
        service("a", "10.96.0.10"),
        service("b", "10.96.0.11"),
        endpoint_slice("shared", "a", "10.1.0.1"),
    )
    tracker.flush()
    report(tracker, endpoint_slice("shared", "b", "10.1.0.1"))
    changes = tracker.flush()
    assert set(changes.ports) == {frontend("10.96.0.10"), frontend("10.96.0.11")}
    assert backends(tracker, "10.96.0.10") == []
    assert backends(tracker, "10.96.0.11") == ["10.1.0.1:8080"]


def test_the_older_claim_to_a_frontend_keeps_it_while_it_changes() -> None:
    tracker = ChangeTracker(CIDRS)
    report(tracker, service("first", "10.96.0.10"), endpoint_slice("f", "first", "10.1.0.1"))
    tracker.flush()
    report(tracker, service("second", "10.96.0.10"), endpoint_slice("s", "second", "10.1.0.9"))
    changes = tracker.flush()
    assert changes.ports == {}
    assert any("already served by shop/first" in e for e in changes.errors)
    report(tracker, endpoint_slice("f", "first", "10.1.0.1", "10.1.0.2"))
    tracker.flush()
    assert backends(tracker, "10.96.0.10") == ["10.1.0.1:8080", "10.1.0.2:8080"]
    tracker.service_changed(("shop", "first"), None)
    tracker.flush()
    assert backends(tracker, "10.96.0.10") == ["10.1.0.9:8080"]
    assert tracker.errors() == []


def test_a_bad_object_is_reported_once_skipped_and_forgotten_when_fixed() -> None:
    tracker = ChangeTracker(CIDRS)
    report(tracker, service("web", "10.96.0.10"), service("ok", "10.96.0.11"))
    tracker.flush()
    bad = service("web", "10.96.0.10", port=70000)
    report(tracker, bad)
    changes = tracker.flush()
    assert len(changes.errors) == 1 and "spec.ports[0].port: 70000" in changes.errors[0]
    assert changes.ports == {frontend("10.96.0.10"): None}  # as if deleted: skipped
    assert frontend("10.96.0.11") in tracker.ports  # the rest is untouched
    assert tracker.flush().errors == []  # reported once, still listed
    assert len(tracker.errors()) == 1
    report(tracker, service("web", "10.96.0.10"))
    tracker.flush()
    assert tracker.errors() == [] and frontend("10.96.0.10") in tracker.ports


def test_replace_all_reports_new_changed_and_vanished_objects_only() -> None:
    tracker = ChangeTracker(CIDRS)
    web, api = service("web", "10.96.0.10"), service("api", "10.96.0.11")
    assert tracker.replace_all([web, api, copy.deepcopy(web)], [])
    changes = tracker.flush()
    assert len(changes.ports) == 2
    assert changes.errors == ["Service shop/web is defined twice; the first wins"]
    assert tracker.replace_all([web, api], [])  # the duplicate went
    assert tracker.flush().ports == {} and tracker.errors() == []
    # The same content read again (a file rewritten unchanged) is no change.
    assert not tracker.replace_all([copy.deepcopy(web), copy.deepcopy(api)], [])
    assert tracker.replace_all([web], [endpoint_slice("web-a", "web", "10.1.0.1")])
    changes = tracker.flush()
    assert changes.ports.keys() == {frontend("10.96.0.10"), frontend("10.96.0.11")}
    assert changes.ports[frontend("10.96.0.11")] is None


def test_node_and_zone_changes_recompute_every_service() -> None:
    tracker = ChangeTracker(CIDRS, node_name="node-a")
    local = service("web", "10.96.0.10")
    local["spec"]["internalTrafficPolicy"] = "Local"
    slice_doc = endpoint_slice("web-a", "web", "10.1.0.1", "10.1.0.2")
    slice_doc["endpoints"][0]["nodeName"] = "node-a"
    slice_doc["endpoints"][1]["nodeName"] = "node-b"
    report(tracker, local, slice_doc)
    tracker.flush()
    assert backends(tracker, "10.96.0.10") == ["10.1.0.1:8080"]
    tracker.set_node("node-b", None)
    tracker.flush()
    assert tracker.ports[frontend("10.96.0.10")].backends == (
        Backend(ip_address("10.1.0.2"), 8080),
    )


def stamped(addresses: list[str], at: float, name: str = "web-a") -> dict[str, Any]:
    """A slice of web with these addresses and a last-change-trigger-time of at."""
    doc = endpoint_slice(name, "web", *addresses)
    iso = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    doc["metadata"]["annotations"] = {TRIGGER_TIME_ANNOTATION: iso}
    return doc


def test_every_endpoint_change_between_two_syncs_is_one_latency_sample() -> None:
    """kube-proxy's EndpointsChangeTracker appends each update's trigger time, not only
    the latest one per slice, even when the changes cancel out by the sync."""
    tracker = ChangeTracker(CIDRS, wall_clock=FakeClock(1000.0))
    report(tracker, stamped(["10.1.0.1"], 1001.0))
    report(tracker, stamped(["10.1.0.1", "10.1.0.2"], 1002.5))
    report(tracker, stamped(["10.1.0.1"], 1003.0))
    assert tracker.flush().trigger_times == [1001.0, 1002.5, 1003.0]


def test_an_update_that_changes_no_endpoint_is_no_sample() -> None:
    """esInfoChanged compares with the pending update if there is one, else the applied
    one; only endpoints, ports and their conditions count, not annotations or labels."""
    tracker = ChangeTracker(CIDRS, wall_clock=FakeClock(1000.0))
    report(tracker, stamped(["10.1.0.1"], 1001.0))
    same = stamped(["10.1.0.1"], 1002.0)  # a new annotation only
    same["metadata"]["labels"]["team"] = "shop"
    report(tracker, same)
    assert tracker.flush().trigger_times == [1001.0]
    report(tracker, copy.deepcopy(stamped(["10.1.0.1"], 1003.0)))
    assert tracker.flush().trigger_times == []  # the same as applied


def test_trigger_times_before_the_proxy_started_are_not_latencies() -> None:
    """At a start, every existing slice would otherwise count as one huge sample."""
    tracker = ChangeTracker(CIDRS, wall_clock=FakeClock(1000.0))
    report(tracker, stamped(["10.1.0.1"], 400.0))
    assert tracker.flush().trigger_times == []
    report(tracker, stamped(["10.1.0.2"], 1000.5))
    assert tracker.flush().trigger_times == [1000.5]


def test_a_deleted_slice_forgets_the_pending_trigger_times_of_its_whole_service() -> None:
    """EndpointSliceUpdate with removeSlice deletes lastChangeTriggerTimes[service]: a
    deletion's annotation says when the slice last changed, not when it went."""
    tracker = ChangeTracker(CIDRS, wall_clock=FakeClock(1000.0))
    report(tracker, stamped(["10.1.0.9"], 1000.5, name="web-b"))
    tracker.flush()
    report(tracker, stamped(["10.1.0.1"], 1001.0))
    tracker.slice_changed(("shop", "web-b"), None)
    assert tracker.flush().trigger_times == []


def test_a_malformed_trigger_time_is_no_sample_and_no_error() -> None:
    tracker = ChangeTracker(CIDRS, wall_clock=FakeClock(1000.0))
    doc = stamped(["10.1.0.1"], 1001.0)
    doc["metadata"]["annotations"][TRIGGER_TIME_ANNOTATION] = "yesterday"
    report(tracker, doc)
    changes = tracker.flush()
    assert changes.trigger_times == [] and changes.errors == []
