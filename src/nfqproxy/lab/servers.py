"""The lab's backend servers: HTTP over TCP and a UDP responder, both answering their name."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class NameHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so one connection can span many requests

    def do_GET(self) -> None:
        body = f"{self.server.backend_name}\n".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _udp_loop(sock: socket.socket, reply: bytes) -> None:
    while True:
        _, peer = sock.recvfrom(65535)
        sock.sendto(reply, peer)


def serve(name: str, tcp_port: int, udp_port: int, ready_file: Path | None = None) -> None:
    """Serves until killed."""
    http = ThreadingHTTPServer(("0.0.0.0", tcp_port), NameHandler)
    http.daemon_threads = True
    http.backend_name = name  # type: ignore[attr-defined]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", udp_port))
    threading.Thread(target=_udp_loop, args=(udp, name.encode()), daemon=True).start()
    if ready_file is not None:
        ready_file.write_text("ready\n")
    http.serve_forever()
