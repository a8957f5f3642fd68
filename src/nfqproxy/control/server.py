"""The proxy's end of the inspection socket: a unix socket, root-only, that answers one
JSON request per connection with one JSON answer. A unix socket on the file system is
reachable from any network namespace of the host, which is where operators and their
tools run; it is never on the network.

Requests: {"command": "services"}, {"command": "flows", "service": ..., "backend": ...,
"client": ...}, {"command": "explain", "source": "IP[:PORT]", "destination": "IP:PORT",
"protocol": "TCP"}. Answers: {"ok": ...} or {"error": "..."}.

{"command": "trace", "service": ..., "reasons": [...]} is answered {"ok": "tracing"}, then
a line per decision ({"event": {...}}, or {"lost": n}) until the client closes its end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nfqproxy.control import trace, views
from nfqproxy.datapath.interface import Datapath
from nfqproxy.fields import PROTOCOLS, IPAddress, ObjectError, read_ip
from nfqproxy.model import IPNetwork, ServicePort, ServicePortKey

log = logging.getLogger(__name__)
DEFAULT_SOCKET = Path("/run/nfqproxy/control.sock")
MAX_REQUEST = 64 * 1024
MAX_CONCURRENT = 4  # requests answered at once; more wait their turn


class RequestError(ValueError):
    """A request the proxy cannot answer: the message says why."""


class ControlServer:
    """Answers inspection requests from the proxy's own state, in its event loop."""

    def __init__(
        self,
        path: Path,
        ports: Callable[[], Mapping[ServicePortKey, ServicePort]],
        datapath: Datapath,
        seed: int,
        cluster_cidrs: tuple[IPNetwork, ...],
        flows_block: bool = False,
    ) -> None:
        """flows_block: the data path's flow listing blocks (the offload path's asks
        conntrack): it is read in a thread. The others' tables are read in the loop, which
        is the thread the reference path changes them in."""
        self.path = path
        self.ports = ports
        self.datapath = datapath
        self.seed = seed
        self.cluster_cidrs = cluster_cidrs
        self.flows_block = flows_block
        self._server: asyncio.AbstractServer | None = None
        self._busy = asyncio.Semaphore(MAX_CONCURRENT)
        self.tracing = trace.TraceHub(datapath)

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = self.path.parent.stat()
        if folder.st_uid != os.geteuid() or folder.st_mode & 0o022:
            # Another user could put a socket of theirs there and answer for us.
            raise OSError(f"{self.path.parent} is writable by others; choose another --socket")
        if self.path.is_socket():
            if _answers(self.path):
                raise OSError(f"another process serves {self.path}; give this one --socket")
            self.path.unlink()  # a killed process's: nobody answers on it
        elif self.path.exists():
            raise OSError(f"{self.path} exists and is not a socket; not replacing it")
        old_umask = os.umask(0o177)  # created 0600: root's only, from the first instant
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)
        log.info("inspection socket: %s", self.path)

    async def stop(self) -> None:
        self.tracing.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = _parsed(await asyncio.wait_for(reader.readline(), 10.0))
            if isinstance(request, dict) and request.get("command") == "trace":
                await self._trace(request, reader, writer)  # for as long as the client stays
                return
            async with self._busy:  # a few at a time: each may walk a table
                await self._write(writer, await self._answer_request(request))
        except (TimeoutError, ConnectionError, ValueError) as exc:
            # Silent, too long (readline's limit raises ValueError), or gone away.
            log.debug("inspection request dropped: %s", exc)
        finally:
            writer.close()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, answer: object) -> None:
        writer.write(json.dumps(answer).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), 10.0)

    async def _trace(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            tracer = self.tracing.subscribe(_trace_filter(request))
        except ValueError as exc:  # RequestError, trace.TraceRefused
            await self._write(writer, {"error": str(exc)[:500]})
            return
        try:
            await self._write(writer, {"ok": "tracing"})
            await trace.stream(tracer, reader, writer)
        finally:
            self.tracing.unsubscribe(tracer)

    async def _answer_request(self, request: object) -> dict[str, Any]:
        """The answer to a parsed request, or to the error that parsing it gave."""
        try:
            if isinstance(request, Exception):
                raise request
            return {"ok": await self.answer(request)}
        except (RequestError, ValueError, RecursionError) as exc:
            return {"error": str(exc)[:500]}
        except Exception as exc:  # a bug, or conntrack refusing: the proxy carries on
            log.warning("inspection request failed: %s", exc, exc_info=True)
            return {"error": f"the proxy could not answer: {exc}"[:500]}

    async def answer(self, request: object) -> object:
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            raise RequestError('a request is a JSON object with a "command"')
        command = request["command"]
        if command == "services":
            return views.services_view(self.ports(), self.datapath)
        if command == "flows":
            service, backend, client = (_text(request, k) for k in ("service", "backend", "client"))
            if self.flows_block:
                return await asyncio.to_thread(
                    lambda: views.flows_view(self.datapath, service, backend, client)
                )
            return views.flows_view(self.datapath, service, backend, client)
        if command == "explain":
            return self._explain(request)
        raise RequestError(f"unknown command {command[:40]!r}")

    def _explain(self, request: Mapping[str, Any]) -> object:
        client, client_port = parse_endpoint(_text(request, "source"), "source", port_needed=False)
        destination, port = parse_endpoint(_text(request, "destination"), "destination")
        protocol = (_text(request, "protocol") or "TCP").upper()
        if protocol not in PROTOCOLS:
            raise RequestError(f"protocol {protocol[:20]!r}: TCP, UDP or SCTP")
        if port is None or client.version != destination.version:
            raise RequestError("source and destination must be of one IP family")
        source = views.source_bits(client, self.cluster_cidrs)
        return views.explain(
            self.ports(), self.datapath, self.seed, client, client_port, destination, port,
            protocol, source,
        )  # fmt: skip


def _parsed(line: bytes) -> object:
    """The request a line holds, or the error that parsing it gave (answered as such)."""
    try:
        request: object = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return exc
    return request


def _trace_filter(request: Mapping[str, Any]) -> trace.TraceFilter:
    reasons = request.get("reasons") or []
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise RequestError("reasons must be a list of strings")
    return trace.TraceFilter.of(_text(request, "service"), reasons)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _text(request: Mapping[str, Any], key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{key} must be a string")
    return value


def parse_endpoint(
    text: str | None, what: str, port_needed: bool = True
) -> tuple[IPAddress, int | None]:
    """IP, IP:PORT, [IPv6]:PORT or a bare IPv6 address; ValueError naming what is wrong."""
    if not text:
        raise RequestError(f"{what}: an address is needed")
    host, port_text = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        address = read_ip(host, what)
    except ObjectError as exc:
        raise RequestError(str(exc)) from None
    if port_text is None:
        if port_needed:
            raise RequestError(f"{what} {text[:60]!r}: a port is needed (IP:PORT)")
        return address, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise RequestError(f"{what} {text[:60]!r}: the port must be 1-65535")
    return address, int(port_text)
