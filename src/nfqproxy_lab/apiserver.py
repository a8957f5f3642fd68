"""An in-process Kubernetes API server for Services and EndpointSlices, for tests and labs.

No real kube-apiserver can be installed here, so this one follows the list/watch
conventions client-go and kube-proxy rely on:
- one resourceVersion counter for everything, and each object's metadata.resourceVersion;
- list with limit/continue, label selectors (=, ==, !=, in, notin, exists, !exists) and
  field selectors on metadata.name, metadata.namespace, spec.clusterIP and spec.type;
- watch from a resourceVersion, with ADDED/MODIFIED/DELETED (MODIFIED turns into ADDED or
  DELETED when a change moves an object into or out of the selector), BOOKMARK events,
  timeoutSeconds and server-side closes;
- compaction: a watch or continue token from before it gets 410 Expired, either as the
  HTTP status or as an in-stream ERROR event (expired_as), as real servers do both;
- the discovery documents kubectl reads (/api, /apis, /api/v1, ...).

Tests change objects through the Python methods (create, update, delete) and can inject
faults: 500 answers, garbage JSON, a connection cut mid-stream, slow lists, and a restart
with a new resourceVersion history.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import copy
import json
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    plural: str
    group: str
    version: str
    kind: str
    short_names: tuple[str, ...]
    fields: tuple[str, ...]  # field selectors the server supports

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


SERVICES = Resource(
    "services",
    "",
    "v1",
    "Service",
    ("svc",),
    ("metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type"),
)
ENDPOINT_SLICES = Resource(
    "endpointslices",
    "discovery.k8s.io",
    "v1",
    "EndpointSlice",
    (),
    ("metadata.name", "metadata.namespace"),
)
RESOURCES = {r.plural: r for r in (SERVICES, ENDPOINT_SLICES)}


class SelectorError(ValueError):
    pass


_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def _split_requirements(text: str) -> Iterator[str]:
    depth, start = 0, 0
    for i, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


Requirement = tuple[str, str, frozenset[str]]  # (operator, key or path, values)


def parse_label_selector(text: str) -> list[Requirement]:
    requirements: list[Requirement] = []
    for requirement in filter(str.strip, _split_requirements(text or "")):
        match = _REQUIREMENT.match(requirement)
        if not match:
            raise SelectorError(f"unable to parse requirement: {requirement!r}")
        key = match["key"]
        if match["neg"]:
            requirements.append(("!exists", key, frozenset()))
        elif match["op"]:
            requirements.append(
                ("!=" if match["op"] == "!=" else "=", key, frozenset([match["value"]]))
            )
        elif match["setop"]:
            values = frozenset(v.strip() for v in match["values"].split(","))
            requirements.append((match["setop"], key, values))
        else:
            requirements.append(("exists", key, frozenset()))
    return requirements


def labels_match(requirements: list[Requirement], labels: Mapping[str, str]) -> bool:
    for op, key, values in requirements:
        value = labels.get(key)
        ok = {
            "exists": key in labels,
            "!exists": key not in labels,
            "=": value in values,
            "in": value in values,
            "!=": value not in values,
            "notin": value not in values,
        }[op]
        if not ok:
            return False
    return True


def parse_field_selector(
    text: str, resource: Resource, refused: frozenset[str]
) -> list[Requirement]:
    requirements: list[Requirement] = []
    for requirement in filter(str.strip, (text or "").split(",")):
        match = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", requirement)
        if not match:
            raise SelectorError(f"invalid field selector: {requirement!r}")
        path, op, value = match.groups()
        if path not in resource.fields or path in refused:
            raise SelectorError(f'field label not supported: "{path}"')
        requirements.append(("!=" if op == "!=" else "=", path, frozenset([value])))
    return requirements


def fields_match(requirements: list[Requirement], obj: Obj) -> bool:
    for op, path, values in requirements:
        node: Any = obj
        for part in path.split("."):
            node = node.get(part, "") if isinstance(node, Mapping) else ""
        if (str(node) in values) != (op == "="):
            return False
    return True


def status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class Event:
    rv: int
    resource: str
    type: str
    obj: Obj
    old: Obj | None = None


@dataclass
class Faults:
    errors: int = 0  # answer this many requests with 500
    garbage: int = 0  # answer this many requests with invalid JSON
    cut_streams: int = 0  # end this many watch streams abruptly after one event
    list_delay: float = 0.0  # seconds every list waits before its answer (a slow server)


@dataclass
class FakeApiServer:
    bookmark_interval: float = 1.0
    expired_as: Literal["http", "event"] = "http"
    refused_field_selectors: frozenset[str] = frozenset()
    faults: Faults = field(default_factory=Faults)
    rv: int = 1000
    compacted: int = 0
    objects: dict[str, dict[tuple[str, str], Obj]] = field(
        default_factory=lambda: {name: {} for name in RESOURCES}
    )
    history: list[Event] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    generation: int = 0
    nodes: dict[str, Obj] = field(default_factory=dict)  # read-only, for the node's zone

    def __post_init__(self) -> None:
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- changes, from tests ------------------------------------------------------------

    async def _record(self, resource: str, kind: str, obj: Obj, old: Obj | None = None) -> Obj:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        obj["metadata"].setdefault("namespace", "default")
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            self.objects[resource].pop(key, None)
        else:
            self.objects[resource][key] = obj
        self.history.append(Event(self.rv, resource, kind, obj, old))
        async with self._changed:
            self._changed.notify_all()
        return obj

    async def create(self, resource: str, obj: Obj) -> Obj:
        return await self._record(resource, "ADDED", obj)

    async def update(self, resource: str, obj: Obj) -> Obj:
        key = (obj["metadata"].get("namespace", "default"), obj["metadata"]["name"])
        return await self._record(resource, "MODIFIED", obj, self.objects[resource].get(key))

    async def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self.objects[resource][(namespace, name)]
        await self._record(resource, "DELETED", obj)

    async def compact(self) -> None:
        """Forgets history and ends open watches: clients that re-watch from a
        resourceVersion before now, or continue an old list, get 410 Expired."""
        self.compacted = self.rv
        self.history.clear()
        self.generation += 1
        async with self._changed:
            self._changed.notify_all()

    async def restart_with_new_history(self, jump: int = 100000) -> None:
        """As after an etcd restore: resourceVersions jump and old ones mean nothing."""
        self.rv += jump
        await self.compact()

    # --- HTTP ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults_middleware])
        routes = [
            web.get("/version", self._version),
            web.get("/api", self._api),
            web.get("/apis", self._apis),
        ]
        for resource in RESOURCES.values():
            base = f"/apis/{resource.api_version}" if resource.group else f"/api/{resource.version}"
            plural = resource.plural
            routes += [
                web.get(base, partial(self._resource_list, resource)),
                web.get(f"{base}/{plural}", partial(self._collection, resource)),
                web.get(
                    f"{base}/namespaces/{{namespace}}/{plural}", partial(self._collection, resource)
                ),
                web.get(
                    f"{base}/namespaces/{{namespace}}/{plural}/{{name}}",
                    partial(self._one, resource),
                ),
            ]
        routes.append(web.get("/api/v1/nodes/{name}", self._node))
        app.add_routes(routes)
        return app

    async def _node(self, request: web.Request) -> web.Response:
        node = self.nodes.get(request.match_info["name"])
        if node is None:
            return web.json_response(status(404, "NotFound", "node not found"), status=404)
        return web.json_response({"kind": "Node", "apiVersion": "v1", **node})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.url = f"http://{host}:{sockets[0].getsockname()[1]}"
        return self.url

    async def start_on_socket(self, sock: socket.socket) -> str:
        """Serves on a listening socket made elsewhere (inside a lab namespace, say)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        self.generation += 1  # ends every open watch, so that cleanup need not wait on them
        async with self._changed:
            self._changed.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _faults_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        if request.path.startswith(("/api/v1/", "/apis/discovery.k8s.io/v1/")):
            if self.faults.errors:
                self.faults.errors -= 1
                return web.json_response(status(500, "InternalError", "injected fault"), status=500)
            if self.faults.garbage:
                self.faults.garbage -= 1
                return web.Response(
                    text='{"kind": "ServiceList", "items": [', content_type="application/json"
                )
        response: web.StreamResponse = await handler(request)
        return response

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0-nfqproxy-lab",
                "platform": "linux/amd64",
            }
        )

    async def _api(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}
                ],
            }
        )

    async def _apis(self, request: web.Request) -> web.Response:
        version = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
        return web.json_response(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {"name": "discovery.k8s.io", "versions": [version], "preferredVersion": version}
                ],
            }
        )

    async def _resource_list(self, resource: Resource, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": resource.api_version,
                "resources": [
                    {
                        "name": resource.plural,
                        "singularName": resource.kind.lower(),
                        "namespaced": True,
                        "kind": resource.kind,
                        "verbs": ["get", "list", "watch"],
                        "shortNames": list(resource.short_names),
                    }
                ],
            }
        )

    def _typed(self, resource: Resource, obj: Obj) -> Obj:
        return {"kind": resource.kind, "apiVersion": resource.api_version, **obj}

    async def _one(self, resource: Resource, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        obj = self.objects[resource.plural].get(key)
        if obj is None:
            return web.json_response(
                status(404, "NotFound", f'{resource.plural} "{key[1]}" not found'), status=404
            )
        return web.json_response(self._typed(resource, obj))

    async def _collection(self, resource: Resource, request: web.Request) -> web.StreamResponse:
        query, namespace = request.query, request.match_info.get("namespace")
        try:
            labels = parse_label_selector(query.get("labelSelector", ""))
            fields = parse_field_selector(
                query.get("fieldSelector", ""), resource, self.refused_field_selectors
            )
        except SelectorError as exc:
            return web.json_response(status(400, "BadRequest", str(exc)), status=400)

        def matches(obj: Obj | None) -> bool:
            if obj is None:
                return False
            meta = obj.get("metadata", {})
            if namespace is not None and meta.get("namespace") != namespace:
                return False
            return labels_match(labels, meta.get("labels") or {}) and fields_match(fields, obj)

        if query.get("watch") in ("1", "true"):
            return await self._watch(request, resource, matches)
        if self.faults.list_delay:
            await asyncio.sleep(self.faults.list_delay)
        return self._list(resource, matches, query)

    def _list(
        self, resource: Resource, matches: Callable[[Obj | None], bool], query: Mapping[str, str]
    ) -> web.Response:
        list_rv, start = self.rv, ""
        if query.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(query["continue"]))
                list_rv, start = int(token["rv"]), str(token["start"])
            except (ValueError, KeyError, TypeError):
                return web.json_response(
                    status(400, "BadRequest", "invalid continue token"), status=400
                )
            if list_rv < self.compacted:
                return web.json_response(
                    status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old "
                        "to display a consistent list result.",
                    ),
                    status=410,
                )
        items = sorted(
            (obj for key, obj in self.objects[resource.plural].items() if matches(obj)),
            key=lambda obj: (obj["metadata"]["namespace"], obj["metadata"]["name"]),
        )
        items = [
            o for o in items if f"{o['metadata']['namespace']}/{o['metadata']['name']}" > start
        ]
        metadata: Obj = {"resourceVersion": str(list_rv)}
        limit = int(query.get("limit", "0") or 0)
        if 0 < limit < len(items):
            last = items[limit - 1]["metadata"]
            metadata["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "start": f"{last['namespace']}/{last['name']}"}).encode()
            ).decode()
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return web.json_response(
            {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": metadata,
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, resource: Resource, matches: Callable[[Obj | None], bool]
    ) -> web.StreamResponse:
        query = request.query
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        expired = bool(since) and since < self.compacted
        if expired and self.expired_as == "http":
            return web.json_response(
                status(410, "Expired", f"too old resource version: {since} ({self.compacted})"),
                status=410,
            )
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            return await self._stream(
                request, response, resource, matches, since, timeout, bookmarks, expired
            )
        except (ConnectionResetError, ClientConnectionResetError):
            return response  # the client went away: the watch is over

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        resource: Resource,
        matches: Callable[[Obj | None], bool],
        since: int,
        timeout: float,
        bookmarks: bool,
        expired: bool,
    ) -> web.StreamResponse:

        async def send(kind: str, obj: Obj) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        if expired:
            await send(
                "ERROR",
                status(410, "Expired", f"too old resource version: {since} ({self.compacted})"),
            )
            return response
        if not since:  # "0" or absent: the current state first, as synthetic ADDED events
            for obj in self.objects[resource.plural].values():
                if matches(obj):
                    await send("ADDED", self._typed(resource, obj))
            since = self.rv
        loop = asyncio.get_running_loop()
        deadline, generation, position = loop.time() + timeout, self.generation, since
        while True:
            # history is in resourceVersion order: find the new events without a scan
            start = bisect.bisect_right(self.history, position, key=lambda e: e.rv)
            pending = [e for e in self.history[start:] if e.resource == resource.plural]
            if not pending:
                position = self.rv  # everything up to now is delivered (or not ours)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return response  # the server closes the watch, as timeoutSeconds asks
                async with self._changed:
                    try:
                        await asyncio.wait_for(
                            self._changed.wait(), min(remaining, self.bookmark_interval)
                        )
                    except TimeoutError:
                        if bookmarks:
                            await send(
                                "BOOKMARK",
                                {
                                    "kind": resource.kind,
                                    "apiVersion": resource.api_version,
                                    "metadata": {"resourceVersion": str(position)},
                                },
                            )
                if self.generation != generation:
                    return response  # compacted or restarted: the client must re-watch
                continue
            for event in pending:
                position = event.rv
                now_in, was_in = matches(event.obj), matches(event.old)
                kind = event.type
                if kind == "MODIFIED" and now_in != was_in:
                    kind = "ADDED" if now_in else "DELETED"
                elif not now_in and not (kind == "DELETED" and was_in):
                    continue
                await send(kind, self._typed(resource, event.obj))
                if self.faults.cut_streams:
                    self.faults.cut_streams -= 1
                    assert request.transport is not None
                    request.transport.close()  # a reset mid-stream, as a dying proxy does
                    return response
