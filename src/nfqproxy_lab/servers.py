"""The lab's backend servers: HTTP over TCP and a UDP responder, both answering their name."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BLOB = 256 * 1024 * 1024


def blob(size: int) -> bytes:
    """size reproducible bytes: what /blob/<size> sends, so clients can check them."""
    return random.Random(size).randbytes(size)


class NameHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so one connection can span many requests

    def do_GET(self) -> None:
        """/ answers the backend's name; /peer its name and the client address it sees (a
        masqueraded client shows as the node); /blob/N sends N bytes of blob(N)."""
        if self.path.startswith("/blob/") and self.path[6:].isdigit():
            self._reply(blob(min(int(self.path[6:]), MAX_BLOB)), "application/octet-stream")
        elif self.path == "/peer":
            peer = f"{self.server.backend_name} {self.client_address[0]}\n"  # type: ignore[attr-defined]
            self._reply(peer.encode(), "text/plain")
        else:
            self._reply(f"{self.server.backend_name}\n".encode(), "text/plain")  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        """Reads the body and answers its SHA-256, for upload tests."""
        length = min(int(self.headers.get("Content-Length", "0")), MAX_BLOB)
        digest = hashlib.sha256()
        while length:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            length -= len(chunk)
        self._reply(digest.hexdigest().encode(), "text/plain")

    def _reply(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _udp_loop(sock: socket.socket, reply: bytes) -> None:
    while True:
        _, peer = sock.recvfrom(65535)
        sock.sendto(reply, peer)


class BacklogHTTPServer(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5. A burst of connections (50 clients at
    # once, or SYNs a restarting proxy held and releases together) then overflows the
    # accept queue, and the kernel falls back to SYN cookies and resets some
    # connections. Real servers listen with hundreds (nginx 511, Go 4096).
    request_queue_size = 1024


class BacklogHTTPServer6(BacklogHTTPServer):
    """IPv6 only: IPv4 clients reach the IPv4 server and are seen by their own address,
    not as an IPv4-mapped one."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def serve(name: str, tcp_port: int, udp_port: int, ready_file: Path | None = None) -> None:
    """Serves on both families until killed (a lab without IPv6 addresses only gets IPv4
    traffic)."""
    servers: list[ThreadingHTTPServer] = [
        BacklogHTTPServer(("0.0.0.0", tcp_port), NameHandler),
        BacklogHTTPServer6(("::", tcp_port), NameHandler),
    ]
    for http in servers:
        http.daemon_threads = True
        http.backend_name = name  # type: ignore[attr-defined]
    for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        udp.bind((anywhere, udp_port))
        threading.Thread(target=_udp_loop, args=(udp, name.encode()), daemon=True).start()
    threading.Thread(target=servers[1].serve_forever, daemon=True).start()
    if ready_file is not None:
        ready_file.write_text("ready\n")
    servers[0].serve_forever()
