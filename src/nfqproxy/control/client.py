"""The commands' end of the inspection socket: `nfqproxy services`, `flows` and `explain`
ask the running proxy and print a table, or its JSON with `-o json`; `nfqproxy trace`
prints its decisions as they are made, until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from nfqproxy.control.server import DEFAULT_SOCKET
from nfqproxy.datapath.verdicts import REASONS

COMMANDS = ("services", "flows", "explain", "trace")
TIMEOUT = 30.0  # seconds: a flows listing on the offload path walks conntrack


class ControlError(RuntimeError):
    """No proxy answered, or it refused the request."""


def _connect(path: Path, request: dict[str, Any]) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise ControlError(
            f"no nfqproxy answers on {path} ({exc.strerror}): is it running, and is this "
            "its --socket?"
        ) from None
    except PermissionError:
        sock.close()
        raise ControlError(f"{path}: permission denied (the socket is root's)") from None
    sock.sendall(json.dumps(request).encode() + b"\n")
    return sock


def _ok(answer: dict[str, Any]) -> Any:
    if "error" in answer:
        raise ControlError(str(answer["error"]))
    if "ok" not in answer:
        raise ControlError("the proxy's answer was empty")
    return answer["ok"]


def ask(path: Path, request: dict[str, Any]) -> Any:
    """The proxy's answer to one request."""
    with _connect(path, request) as sock:
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return _ok(json.loads(b"".join(chunks) or b"{}"))


class TraceStream:
    """A trace the proxy agreed to send: its lines ({"event": ...} or {"lost": n}) until
    it ends the stream. Closing it closes the socket, which ends the trace in the proxy."""

    def __init__(self, path: Path, request: dict[str, Any]) -> None:
        self._sock = _connect(path, request)
        self._lines = self._sock.makefile("rb")
        try:
            _ok(json.loads(self._lines.readline() or b"{}"))
        except BaseException:
            self.close()
            raise
        self._sock.settimeout(None)  # decisions come when they come

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in self._lines:
            yield json.loads(line)

    def close(self) -> None:
        self._lines.close()
        self._sock.close()

    def __enter__(self) -> TraceStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def add_commands(commands: Any) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--socket",
            type=Path,
            default=DEFAULT_SOCKET,
            help=f"the running proxy's inspection socket (default {DEFAULT_SOCKET})",
        )
        parser.add_argument(
            "-o", "--output", choices=["table", "json"], default="table", help="the format"
        )

    services = commands.add_parser("services", help="the service ports the proxy serves")
    common(services)
    flows = commands.add_parser("flows", help="the flows the proxy tracks")
    common(flows)
    flows.add_argument("--service", help="only this service (namespace/name[:port])")
    flows.add_argument("--backend", help="only to this backend (IP or IP:PORT)")
    flows.add_argument("--client", help="only from this client (IP or IP:PORT)")
    explain = commands.add_parser(
        "explain", help="which backend a new flow gets, and why (nothing is changed)"
    )
    common(explain)
    explain.add_argument("source", help="the client: IP, or IP:PORT for the Maglev slot")
    explain.add_argument("destination", help="the service address: IP:PORT ([IPv6]:PORT)")
    explain.add_argument(
        "--proto", default="tcp", choices=["tcp", "udp", "sctp"], help="the protocol"
    )
    trace = commands.add_parser(
        "trace", help="each new flow, reject and drop as the proxy decides it, until Ctrl-C"
    )
    common(trace)
    trace.add_argument("--service", help="only this service (namespace/name[:port])")
    trace.add_argument(
        "--reason",
        action="append",
        choices=REASONS,
        metavar="REASON",
        help=f"only decisions for this reason; again for more ({', '.join(REASONS)})",
    )


def dispatch(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"command": args.command}
    if args.command == "trace":
        request.update(service=args.service, reasons=args.reason or [])
        return follow_trace(args.socket, request, args.output == "json")
    if args.command == "flows":
        request.update(service=args.service, backend=args.backend, client=args.client)
    elif args.command == "explain":
        request.update(
            source=args.source, destination=args.destination, protocol=args.proto.upper()
        )
    answer = ask(args.socket, request)
    if args.output == "json":
        print(json.dumps(answer, indent=2))
    elif args.command == "services":
        print(services_table(answer))
    elif args.command == "flows":
        print(flows_table(answer))
    else:
        print(explain_text(answer))
    return 0


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in
              enumerate(headers)]  # fmt: skip
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def services_table(services: list[dict[str, Any]]) -> str:
    rows = []
    for service in services:
        backends = service["backends"] or [{"endpoint": "-", "state": "none", "share": 0.0}]
        for i, backend in enumerate(backends):
            first = i == 0
            rows.append(
                [
                    service["address"] if first else "",
                    service["service"] if first else "",
                    backend["endpoint"],
                    backend["state"],
                    f"{backend['share'] * 100:.1f}%",
                    ", ".join(service["policies"]) if first else "",
                ]
            )
    headers = ["ADDRESS", "SERVICE", "BACKEND", "STATE", "MAGLEV", "POLICIES"]
    return table(headers, rows)


def flows_table(answer: dict[str, Any]) -> str:
    rows = [
        [
            f["protocol"],
            f"{f['client']}:{f['client_port']}",
            f"{f['vip']}:{f['vport']}",
            f"{f['backend']}:{f['backend_port']}",
            f["service"],
            f["state"],
            "-" if f.get("age") is None else f"{f['age']:.0f}s",
            f"{f['expires_in']:.0f}s",
        ]
        for f in answer["flows"]
    ]
    headers = ["PROTO", "CLIENT", "SERVICE ADDRESS", "BACKEND", "SERVICE", "STATE", "AGE",
               "EXPIRES"]  # fmt: skip
    summary = f"{len(rows)} shown of {answer['total']} tracked"
    if answer["listed"] < answer["total"]:
        summary += f" (the first {answer['listed']} read)"
    return (
        table(headers, rows) + "\n" + summary + "\n" + table_fill(answer["total"], answer["table"])
    )


def table_fill(total: int, fill: dict[str, Any]) -> str:
    """The table's fill and what it lost, as far as its data path counts them."""
    held = f" ({fill['held_by']})" if "held_by" in fill else ""
    parts = [f"table{held}: {total} of {fill['capacity']} ({total / fill['capacity']:.1%})"
             if fill.get("capacity") else f"table{held}: {total}"]  # fmt: skip
    labels = {"evicted": "evicted when full", "dropped_when_full": "dropped when full"}
    for key, label in (*labels.items(), ("expired", "expired")):
        if key in fill:
            parts.append(f"{fill[key]} {label}")
    return ", ".join(parts)


def explain_text(answer: dict[str, Any]) -> str:
    lines = [f"flow:       {answer['flow']}"]
    for key in ("service", "policies", "table", "candidates", "draining", "affinity"):
        if answer.get(key):
            value = answer[key]
            text = ", ".join(value) if isinstance(value, list) else str(value)
            lines.append(f"{key + ':':<12}{text}")
    if "maglev" in answer:
        m = answer["maglev"]
        lines.append(f"{'maglev:':<12}hash {m['hash']} -> slot {m['slot']} of {m['of']}")
    if "masquerade" in answer:
        lines.append(f"{'masquerade:':<12}{'yes' if answer['masquerade'] else 'no'}")
    lines.append(f"{'verdict:':<12}{answer['verdict']}")
    return "\n".join(lines)


TRACE_HEADERS = ["TIME", "VERDICT", "PROTO", "CLIENT", "DESTINATION", "SERVICE", "BACKEND"]
TRACE_FORMAT = "{:<12}  {:<26}  {:<5}  {:<22}  {:<22}  {:<24}  {}"


def trace_line(event: dict[str, Any]) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    return TRACE_FORMAT.format(
        f"{clock}.{int(event['time'] % 1 * 1000):03d}",
        f"{event['action']} {event['reason']}",
        *(event[key] or "-" for key in ("protocol", "client", "destination", "service")),
        event["backend"] or "-",
    ).rstrip()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def follow_trace(path: Path, request: dict[str, Any], as_json: bool) -> int:
    """Prints the proxy's decisions until Ctrl-C or SIGTERM (exit 0) or the proxy ends the
    stream (exit 1: it stopped)."""
    if threading.current_thread() is threading.main_thread():
        # Set, not inherited: a shell starts background commands with SIGINT ignored, and
        # Python keeps it so; Ctrl-C (or a kill) must end a trace in any case.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _interrupt)
    shown = 0
    try:
        with TraceStream(path, request) as stream:
            if not as_json:
                print(TRACE_FORMAT.format(*TRACE_HEADERS).rstrip(), flush=True)
            for item in stream:
                shown += _show(item, as_json)
    except KeyboardInterrupt:
        print(f"\n{shown} decisions traced", file=sys.stderr)
        return 0
    except BrokenPipeError:  # `| head`: the reader has all it wants
        return 0
    print(f"the proxy ended the trace after {shown} decisions (it stopped)", file=sys.stderr)
    return 1


def _show(item: dict[str, Any], as_json: bool) -> int:
    if "lost" in item:
        print(f"... {item['lost']} decisions lost so far: the trace could not keep up",
              file=sys.stderr)  # fmt: skip
        return 0
    print(json.dumps(item["event"]) if as_json else trace_line(item["event"]), flush=True)
    return 1
