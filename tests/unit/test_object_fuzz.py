"""Hostile objects and manifests, generated: every one is parsed or refused with a clear
error (ObjectError, ManifestError), never a crash, and never harms the objects beside it."""

from __future__ import annotations

import copy
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfqproxy.fields import ObjectError
from nfqproxy.model import parse_endpoint_slice, parse_service
from nfqproxy.sources.manifests import ManifestError, load_manifest_file
from nfqproxy.tracker import ChangeTracker
from nfqproxy_lab.topology import lab_endpoint_slices, lab_services

CIDRS = [IPv4Network("10.96.0.0/12")]
SERVICE = lab_services()["items"][0]
SLICE = lab_endpoint_slices([1, 2, 3])["items"][0]

# What JSON or YAML can carry, hostile strings included.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        ["10.96.0.10", "::1", "None", "TCP", "UDP", "ClientIP", "a\nb", "\x00", "$(id)"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in obj a value sits, as a key path."""
    found = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """base with one to three fields replaced by anything, or deleted."""
    obj = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        candidates = [p for p in paths(obj) if p]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return obj


@given(mutated(SERVICE))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_service_is_parsed_or_refused_with_an_object_error(obj: dict[str, Any]) -> None:
    try:
        parse_service(obj, CIDRS)
    except ObjectError as exc:
        assert exc.field_path and "\n" not in exc.field_path


@given(mutated(SLICE))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_endpoint_slice_is_parsed_or_refused_with_an_object_error(obj: dict[str, Any]) -> None:
    try:
        parse_endpoint_slice(obj)
    except ObjectError as exc:
        assert exc.field_path


@given(st.lists(st.one_of(mutated(SERVICE), mutated(SLICE)), min_size=1, max_size=6))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_objects_never_break_the_tracker_or_the_service_beside_them(
    hostile: list[dict[str, Any]],
) -> None:
    tracker = ChangeTracker(CIDRS)
    good = copy.deepcopy(SERVICE)
    good["metadata"]["name"] = "steady"
    good["spec"]["clusterIP"] = good["spec"]["clusterIPs"][0] = "10.96.7.7"
    tracker.service_changed(("default", "steady"), good)
    for number, obj in enumerate(hostile):
        key = ("fuzz", f"object-{number}")
        if obj.get("kind") == "EndpointSlice":
            tracker.slice_changed(key, obj)
        else:
            tracker.service_changed(key, obj)
    tracker.flush()
    steady = {p.name for p in tracker.ports.values() if p.name.startswith("default/steady")}
    assert steady == {"default/steady:http", "default/steady:dns"}


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_manifest_text_is_loaded_or_refused_with_a_manifest_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text)
        try:
            load_manifest_file(path, CIDRS)
        except ManifestError as exc:
            assert str(exc).startswith(str(path))
