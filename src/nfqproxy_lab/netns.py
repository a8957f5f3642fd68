"""Network namespaces through iproute2, and threads that work inside one.

Commands run without a shell. Names are checked by the caller (Lab) before they get here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns

NETNS_DIR = Path("/run/netns")
T = TypeVar("T")


class CommandError(RuntimeError):
    pass


def run(command: Sequence[str], check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(list(command), input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise CommandError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def names() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def add(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def delete(name: str) -> None:
    if exists(name):
        run(["ip", "netns", "delete", name], check=False)


def ip_batch(namespace: str, commands: Sequence[str]) -> None:
    """Runs `ip` commands inside a namespace in one process."""
    run(["ip", "-n", namespace, "-batch", "-"], stdin="\n".join(commands) + "\n")


def exec_command(namespace: str, command: Sequence[str]) -> list[str]:
    """The argv that runs command inside the namespace (ip netns exec keeps the pid)."""
    return ["ip", "netns", "exec", namespace, *command]


def sysctl(namespace: str, key: str, value: str) -> None:
    run(exec_command(namespace, ["sysctl", "-qw", f"{key}={value}"]))


class NetnsThread:
    """A worker thread that lives inside a namespace: sockets it creates belong there."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"netns-{namespace}",
            initializer=pyroute2_netns.setns,
            initargs=(namespace, 0),
        )

    def call(self, function: Callable[..., T], *args: object, timeout: float = 120.0) -> T:
        return self.submit(function, *args).result(timeout)

    def submit(self, function: Callable[..., T], *args: object) -> Future[T]:
        """Runs function in the namespace without waiting for it."""
        return self._executor.submit(function, *args)

    def close(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> NetnsThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
