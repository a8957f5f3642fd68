"""The in-process API server on an event loop thread of its own, listening inside a lab
namespace, for code that is not itself asynchronous (kernel tests, the scale benchmark)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from nfqproxy_lab.apiserver import FakeApiServer
from nfqproxy_lab.netns import NetnsThread

T = TypeVar("T")


def _loopback_listener(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # come back on the same port
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


class ServedApi:
    """A FakeApiServer listening on 127.0.0.1 inside namespace; call() runs its coroutines."""

    def __init__(self, namespace: str, bookmark_interval: float = 0.5) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        with NetnsThread(namespace) as inside:
            sock = inside.call(_loopback_listener)
        self.namespace = namespace
        self.port = sock.getsockname()[1]
        self.server = FakeApiServer(bookmark_interval=bookmark_interval)
        self.url = self.call(self.server.start_on_socket(sock))

    def go_down(self) -> None:
        """Stops listening and closes every connection: clients are refused, as by an API
        server that is down. Its objects and history stay for come_back()."""
        self.call(self.server.stop())

    def come_back(self) -> None:
        """Listens again on the same address, with the same objects."""
        with NetnsThread(self.namespace) as inside:
            sock = inside.call(_loopback_listener, self.port)
        self.call(self.server.start_on_socket(sock))

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
