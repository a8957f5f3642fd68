"""The model kept current one object at a time, as kube-proxy's change trackers do.

Sources report each Service or EndpointSlice that changed (or vanished). flush() parses
only those, recomputes only the services they touch, and returns only the frontends
whose backends changed, so one endpoint change costs the same at 10 services or 10,000.

Frontend conflicts (one VIP:port claimed by two services) go to the older claim: a new
service cannot take a frontend that already carries traffic. The loser is reported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nfqproxy.fields import ObjectError
from nfqproxy.model import (
    MAX_BACKENDS_PER_PORT,
    EndpointSliceSpec,
    HealthCheck,
    IPNetwork,
    NodeView,
    ObjectKey,
    ServicePort,
    ServicePortKey,
    ServiceSpec,
    Snapshot,
    object_key,
    object_ref,
    parse_endpoint_slice,
    parse_service,
)
from nfqproxy.selection import local_ready_endpoints, service_ports

TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


@dataclass
class Changes:
    """What one flush found."""

    # Frontends whose programming changed: the new ServicePort, or None to remove it.
    ports: dict[ServicePortKey, ServicePort | None] = field(default_factory=dict)
    # Errors that arose from the objects handled in this flush, each reported once.
    errors: list[str] = field(default_factory=list)
    # Trigger times (seconds since the epoch) of the endpoint changes this flush programs,
    # for the network programming latency: one per change, as kube-proxy counts them.
    trigger_times: list[float] = field(default_factory=list)


def trigger_time(obj: Mapping[str, Any]) -> float | None:
    """The slice's last-change-trigger-time as seconds since the epoch; None if absent or
    malformed (kube-proxy then records nothing, and neither do we)."""
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    text = annotations.get(TRIGGER_TIME_ANNOTATION) if isinstance(annotations, Mapping) else None
    if not isinstance(text, str):
        return None
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp.timestamp() if stamp.tzinfo is not None else None


ENDPOINT_FIELDS = ("addresses", "conditions", "nodeName", "zone", "hints")


def slice_content(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """What kube-proxy compares to tell whether a slice update changed anything (its
    endpointSliceInfo): the service, the address type, the ports, and each endpoint's
    addresses, conditions, node, zone and hints, in a stable order. Labels, annotations,
    targetRef and the like do not count."""

    def text(value: object) -> str:
        try:
            return json.dumps(value, sort_keys=True, default=repr)
        except (TypeError, ValueError):  # keys of mixed types, in a malformed object
            return repr(value)

    raw_endpoints, raw_ports = obj.get("endpoints"), obj.get("ports")
    endpoints = (
        sorted(
            text({f: e.get(f) for f in ENDPOINT_FIELDS})
            for e in raw_endpoints
            if isinstance(e, Mapping)
        )
        if isinstance(raw_endpoints, list)
        else [text(raw_endpoints)]
    )
    ports = sorted(map(text, raw_ports)) if isinstance(raw_ports, list) else [text(raw_ports)]
    return (text(_service_of(obj)), text(obj.get("addressType")), *ports, "|", *endpoints)


def _service_of(obj: Mapping[str, Any] | None) -> str | None:
    meta = obj.get("metadata") if obj is not None else None
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    name = labels.get("kubernetes.io/service-name") if isinstance(labels, Mapping) else None
    return name if isinstance(name, str) else None


class ChangeTracker:
    def __init__(
        self,
        service_cidrs: Iterable[IPNetwork],
        service_proxy_name: str | None = None,
        node_name: str | None = None,
        node_zone: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.service_cidrs = list(service_cidrs)
        # Trigger times before this are not latencies of ours: at a start, every existing
        # slice would count as a change made when it was last edited, hours or days ago.
        self.started = wall_clock()
        self.service_proxy_name = service_proxy_name
        self.node_name = node_name
        self.node_zone = node_zone
        self.node_view = NodeView()
        # Raw objects reported since the last flush (None: deleted); only the latest counts.
        self._pending_services: dict[ObjectKey, Mapping[str, Any] | None] = {}
        self._pending_slices: dict[ObjectKey, Mapping[str, Any] | None] = {}
        # Services to recompute, in the order they were reported (a dict keeps it).
        self._dirty: dict[ObjectKey, None] = {}
        self._services: dict[ObjectKey, ServiceSpec] = {}
        self._slices: dict[ObjectKey, EndpointSliceSpec] = {}
        self._slices_of: dict[ObjectKey, dict[ObjectKey, EndpointSliceSpec]] = {}
        self._object_errors: dict[tuple[str, ObjectKey], str] = {}
        # Slices used in part: the ports kube-proxy ignores in them, and why.
        self._ignored_ports: dict[ObjectKey, list[str]] = {}
        # Per slice: its service and the trigger times of its updates since the last flush,
        # and what its last update said (slice_content), to tell real changes.
        self._trigger_times: dict[ObjectKey, tuple[ObjectKey, list[float]]] = {}
        self._slice_content: dict[ObjectKey, tuple[str, ...]] = {}
        # What each service asks for, and who claims each frontend (oldest claim first).
        self._ports_of: dict[ObjectKey, dict[ServicePortKey, ServicePort]] = {}
        self._port_errors: dict[ObjectKey, list[str]] = {}
        self._claims: dict[ServicePortKey, dict[ObjectKey, ServicePort]] = {}
        self._conflicts: dict[ServicePortKey, list[str]] = {}
        self.ports: dict[ServicePortKey, ServicePort] = {}  # what the data path holds
        self.health_checks: dict[ObjectKey, HealthCheck] = {}  # healthCheckNodePorts
        # For sources that hand over everything at once (manifests): what they gave last.
        self._last_services: dict[ObjectKey, Mapping[str, Any]] = {}
        self._last_slices: dict[ObjectKey, Mapping[str, Any]] = {}
        self._duplicates: list[str] = []

    # --- reports from sources -----------------------------------------------------------

    def service_changed(self, key: ObjectKey, obj: Mapping[str, Any] | None) -> None:
        self._pending_services[key] = obj

    def slice_changed(self, key: ObjectKey, obj: Mapping[str, Any] | None) -> None:
        """As kube-proxy's EndpointSliceUpdate: an update that changes what the slice says
        (compared with the last update seen, pending or applied) keeps its trigger time for
        the latency metric, every one of them, not only the latest; a deletion forgets those
        of its service."""
        service = _service_of(obj if obj is not None else self._pending_slices.get(key))
        if service is None and key in self._slices:
            service = self._slices[key].service_name
        owner = (key[0], service or "")
        if obj is None:
            self._slice_content.pop(key, None)
            for slice_key in [k for k, (o, _) in self._trigger_times.items() if o == owner]:
                del self._trigger_times[slice_key]
        else:
            content = slice_content(obj)
            changed = self._slice_content.get(key) != content
            self._slice_content[key] = content
            changed_at = trigger_time(obj)
            if changed and changed_at is not None and changed_at > self.started:
                self._trigger_times.setdefault(key, (owner, []))[1].append(changed_at)
        self._pending_slices[key] = obj

    def replace_all(
        self, services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]
    ) -> bool:
        """For sources that hand over every object each time: reports the ones that are new,
        gone or changed since last time, and returns whether there were any. Objects of an
        unchanged file are the very same dicts, so identity settles most; a file written
        again with the same content compares equal, and is no change. The first of two
        same-named objects (from two files) wins; the second is an error."""
        duplicates: list[str] = []
        reported = False
        for kind, objects, last, report in (
            ("Service", services, self._last_services, self.service_changed),
            ("EndpointSlice", slices, self._last_slices, self.slice_changed),
        ):
            current: dict[ObjectKey, Mapping[str, Any]] = {}
            for obj in objects:
                key = object_key(obj)
                if key in current:
                    duplicates.append(f"{kind} {key[0]}/{key[1]} is defined twice; the first wins")
                    continue
                current[key] = obj
                before = last.get(key)
                if before is not obj and before != obj:
                    report(key, obj)
                    reported = True
            for key in last.keys() - current.keys():
                report(key, None)
                reported = True
            last.clear()
            last.update(current)
        reported = reported or duplicates != self._duplicates
        self._duplicates = duplicates
        return reported

    def set_node(self, node_name: str | None, node_zone: str | None) -> None:
        """The node's name or zone changed: every service's choice may change."""
        if (node_name, node_zone) != (self.node_name, self.node_zone):
            self.node_name, self.node_zone = node_name, node_zone
            self._dirty.update(dict.fromkeys(self._services))

    def set_node_view(self, view: NodeView) -> None:
        """The node's NodePort addresses changed: every NodePort may change."""
        if view != self.node_view:
            self.node_view = view
            self._dirty.update(dict.fromkeys(self._services))

    # --- the current state ---------------------------------------------------------------

    def _frontend_errors(self) -> list[str]:
        """Ports left out: too many backends, or a frontend another service holds."""
        errors = [m for messages in self._port_errors.values() for m in messages]
        return errors + [m for messages in self._conflicts.values() for m in messages]

    def errors(self) -> list[str]:
        """Every object currently skipped, or used in part, and why."""
        ignored = [note for notes in self._ignored_ports.values() for note in notes]
        return [
            *self._duplicates,
            *self._object_errors.values(),
            *ignored,
            *self._frontend_errors(),
        ]

    def snapshot(self) -> Snapshot:
        return Snapshot(dict(self.ports), tuple(self._frontend_errors()))

    # --- flush ---------------------------------------------------------------------------

    def flush(self) -> Changes:
        changes = Changes(errors=list(self._duplicates))
        for key, obj in self._pending_services.items():
            self._update_service(key, obj, changes)
        for key, obj in self._pending_slices.items():
            self._update_slice(key, obj, changes)
        self._pending_services.clear()
        self._pending_slices.clear()
        touched: set[ServicePortKey] = set()
        for key in self._dirty:
            self._recompute(key, touched, changes)
        self._dirty.clear()
        for frontend in touched:
            self._resolve(frontend, changes)
        return changes

    def _update_service(
        self, key: ObjectKey, obj: Mapping[str, Any] | None, changes: Changes
    ) -> None:
        self._object_errors.pop(("Service", key), None)
        spec = None
        if obj is not None:
            try:
                spec = parse_service(obj, self.service_cidrs, self.service_proxy_name)
            except ObjectError as exc:
                self._object_errors[("Service", key)] = message = f"{object_ref(obj)}: {exc}"
                changes.errors.append(message)
        self._put_service(key, spec)

    def _put_service(self, key: ObjectKey, spec: ServiceSpec | None) -> None:
        self._dirty[key] = None
        if spec is None:
            self._services.pop(key, None)
        else:
            self._services[key] = spec

    def _update_slice(
        self, key: ObjectKey, obj: Mapping[str, Any] | None, changes: Changes
    ) -> None:
        self._object_errors.pop(("EndpointSlice", key), None)
        self._ignored_ports.pop(key, None)
        spec = None
        if obj is not None:
            try:
                spec = parse_endpoint_slice(obj)
            except ObjectError as exc:
                self._object_errors[("EndpointSlice", key)] = message = f"{object_ref(obj)}: {exc}"
                changes.errors.append(message)
            else:
                if spec.ignored_ports:
                    self._ignored_ports[key] = notes = [
                        f"{object_ref(obj)}: {note}" for note in spec.ignored_ports
                    ]
                    changes.errors += notes
        _, triggers = self._trigger_times.pop(key, (None, []))
        if spec is not None:
            changes.trigger_times += triggers
        self._put_slice(key, spec)

    def _put_slice(self, key: ObjectKey, spec: EndpointSliceSpec | None) -> None:
        """Files the slice under its service; both the old and the new owner are dirty."""
        old = self._slices.pop(key, None)
        if old is not None and old.service_name is not None:
            owner = (old.namespace, old.service_name)
            self._dirty[owner] = None
            siblings = self._slices_of.get(owner, {})
            siblings.pop(key, None)
            if not siblings:
                self._slices_of.pop(owner, None)
        if spec is None:
            return
        self._slices[key] = spec
        if spec.service_name is not None:
            owner = (spec.namespace, spec.service_name)
            self._slices_of.setdefault(owner, {})[key] = spec
            self._dirty[owner] = None

    def _recompute(self, key: ObjectKey, touched: set[ServicePortKey], changes: Changes) -> None:
        """A service's frontends from its spec and slices; claims updated in place, so that
        a service keeps its place in the queue for a frontend while it changes."""
        service = self._services.get(key)
        wanted: dict[ServicePortKey, ServicePort] = {}
        errors: list[str] = []
        if service is not None:
            slices = self._slices_of.get(key, {}).values()
            for port in service_ports(
                service, slices, self.node_name, self.node_zone, self.node_view
            ):
                if len(port.backends) > MAX_BACKENDS_PER_PORT:
                    errors.append(
                        f"{port.name}: {len(port.backends)} backends exceed the limit of "
                        f"{MAX_BACKENDS_PER_PORT}; this port is left out"
                    )
                else:
                    wanted[(port.vip, port.protocol, port.port)] = port
        if service is not None and service.needs_health_check:
            self.health_checks[key] = HealthCheck(
                service.health_check_node_port,
                local_ready_endpoints(self._slices_of.get(key, {}).values(), self.node_name),
            )
        else:
            self.health_checks.pop(key, None)
        if errors:
            self._port_errors[key] = errors
            changes.errors += errors
        else:
            self._port_errors.pop(key, None)
        for frontend in self._ports_of.pop(key, {}).keys() - wanted.keys():
            claimants = self._claims[frontend]
            del claimants[key]
            if not claimants:
                del self._claims[frontend]
            touched.add(frontend)
        for frontend, port in wanted.items():
            self._claims.setdefault(frontend, {})[key] = port
            touched.add(frontend)
        if wanted:
            self._ports_of[key] = wanted

    def _resolve(self, frontend: ServicePortKey, changes: Changes) -> None:
        claimants = list(self._claims.get(frontend, {}).values())
        winner = claimants[0] if claimants else None
        if len(claimants) > 1:
            vip, protocol, port = frontend
            self._conflicts[frontend] = messages = [
                f"{loser.name}: {vip}:{port}/{protocol} is already served by {claimants[0].name}; "
                "this port is left out"
                for loser in claimants[1:]
            ]
            changes.errors += messages
        else:
            self._conflicts.pop(frontend, None)
        if winner is None:
            if self.ports.pop(frontend, None) is not None:
                changes.ports[frontend] = None
        elif self.ports.get(frontend) != winner:
            self.ports[frontend] = changes.ports[frontend] = winner


def build_snapshot(
    services: Iterable[ServiceSpec],
    slices: Iterable[EndpointSliceSpec],
    node_name: str | None = None,
    node_zone: str | None = None,
) -> Snapshot:
    """The frontends and their backends, from already parsed services and slices."""
    tracker = ChangeTracker([], None, node_name, node_zone)
    for service in services:
        tracker._put_service((service.namespace, service.name), service)
    for endpoint_slice in slices:
        tracker._put_slice((endpoint_slice.namespace, endpoint_slice.name), endpoint_slice)
    tracker.flush()
    return tracker.snapshot()
