"""Client traffic for the lab. Run these inside a namespace with NetnsThread.call.

Hosts are IPv4 or IPv6 addresses as text."""

from __future__ import annotations

import hashlib
import http.client
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def http_get(
    host: str,
    port: int,
    timeout: float = 3.0,
    path: str = "/",
    source: tuple[str, int] | None = None,
) -> str:
    """One request on a new connection (from source's address and port, if given);
    returns the answering backend's name."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout, source_address=source)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        return connection.getresponse().read().decode().strip()
    finally:
        connection.close()


def http_peers(host: str, port: int, count: int, timeout: float = 3.0) -> Counter[tuple[str, str]]:
    """(backend name, the client address it saw) -> answers, over count new connections;
    failures count as ('error', <type>)."""
    answers: Counter[tuple[str, str]] = Counter()
    for _ in range(count):
        try:
            name, peer = http_get(host, port, timeout, "/peer").split()
            answers[(name, peer)] += 1
        except OSError as exc:
            answers[("error", type(exc).__name__)] += 1
    return answers


def http_status(
    host: str, port: int, timeout: float = 3.0, path: str = "/"
) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one GET: the health check node port's answer, say."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def http_split(host: str, port: int, count: int, timeout: float = 3.0) -> Counter[str]:
    """Backend name -> answers, over count new connections; failures count as 'error:<type>'."""
    answers: Counter[str] = Counter()
    for _ in range(count):
        try:
            answers[http_get(host, port, timeout)] += 1
        except OSError as exc:
            answers[f"error:{type(exc).__name__}"] += 1
    return answers


class KeepAlive:
    """One long-lived HTTP connection. Create and use it from the same NetnsThread."""

    def __init__(self, host: str, port: int, timeout: float = 3.0) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=timeout)
        self.connection.connect()
        self.local_port = self.connection.sock.getsockname()[1]

    def get(self) -> str:
        self.connection.request("GET", "/")
        return self.connection.getresponse().read().decode().strip()

    def close(self) -> None:
        self.connection.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp_query(host: str, port: int, timeout: float = 2.0, payload: bytes = b"who?") -> str:
    """A connected UDP socket: the kernel accepts replies only from host:port."""
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.send(payload)
        return sock.recv(2048).decode()


def http_download_digest(host: str, port: int, size: int, timeout: float = 30.0) -> str:
    """The SHA-256 of /blob/<size> as received through host:port."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", f"/blob/{size}")
        response = connection.getresponse()
        digest = hashlib.sha256()
        while chunk := response.read(1 << 16):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        connection.close()


def http_upload_digest(host: str, port: int, body: bytes, timeout: float = 30.0) -> str:
    """The SHA-256 the backend computed of body, sent through host:port."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", "/", body=body)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def fetch_url(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(HTTP status, body) of a GET, for the proxy's own endpoints."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def http_slow_download_digest(
    host: str, port: int, size: int, chunk: int = 32768, pause: float = 0.02, timeout: float = 30.0
) -> str:
    """As http_download_digest, reading chunk bytes every pause seconds: a transfer that
    lasts, for tests that disturb the proxy in the middle of it. A small receive buffer
    keeps the server sending all along, rather than the kernel taking it all at once."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.connect()
        assert connection.sock is not None
        connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, chunk)
        connection.request("GET", f"/blob/{size}")
        response = connection.getresponse()
        digest = hashlib.sha256()
        while data := response.read(chunk):
            digest.update(data)
            time.sleep(pause)
        return digest.hexdigest()
    finally:
        connection.close()


def parallel(function: Callable[..., str], count: int, *args: object) -> list[str]:
    """count calls of function(*args) at once, in threads that inherit the caller's network
    namespace; each result, or the exception's text for a call that failed."""

    def one(_: int) -> str:
        try:
            return function(*args)
        except Exception as exc:  # reported, not raised: the test counts failures
            return f"error: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))
