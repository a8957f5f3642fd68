"""healthCheckNodePort servers: one per LoadBalancer service with externalTrafficPolicy
Local, as kube-proxy's pkg/proxy/healthcheck/service_health.go serves them.

A cloud load balancer polls the port on every node and sends traffic only to nodes that
answer 200, which they do while they have a Ready endpoint of the service (serving but
terminating ones do not count) and the proxy is healthy; else 503. Every path answers, and
the body is kube-proxy's:

  {"service": {"namespace": "ns", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": true}

with the headers X-Content-Type-Options: nosniff and X-Load-Balancing-Endpoint-Weight
(the endpoint count). Servers open and close as services change; a port that cannot be
opened (taken by another program, say) is logged and retried at the next sync, and never
keeps the others from serving.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

from aiohttp import web

from nfqproxy.model import HealthCheck, ObjectKey

log = logging.getLogger(__name__)


class ServiceHealthServers:
    def __init__(self, proxy_healthy: Callable[[], bool], host: str = "0.0.0.0") -> None:
        self.proxy_healthy = proxy_healthy
        self.host = host
        self.checks: dict[ObjectKey, HealthCheck] = {}
        self._runners: dict[int, web.AppRunner] = {}  # by port
        self._owner: dict[int, ObjectKey] = {}  # the service each port answers for
        self.errors: dict[int, str] = {}  # ports that could not be opened, and why

    def response(self, key: ObjectKey) -> web.Response:
        check = self.checks.get(key)
        count = check.local_endpoints if check is not None else 0
        healthy = self.proxy_healthy()
        body = {
            "service": {"namespace": key[0], "name": key[1]},
            "localEndpoints": count,
            "serviceProxyHealthy": healthy,
        }
        return web.Response(
            text=json.dumps(body, indent=1) + "\n",
            status=200 if count and healthy else 503,
            content_type="application/json",
            headers={
                "X-Content-Type-Options": "nosniff",
                "X-Load-Balancing-Endpoint-Weight": str(count),
            },
        )

    async def update(self, checks: Mapping[ObjectKey, HealthCheck]) -> None:
        """Serves exactly these checks: opens new ports, closes those no longer asked for.
        When two services claim one port, the first (by name) keeps it."""
        self.checks = dict(checks)
        wanted: dict[int, ObjectKey] = {}
        for key in sorted(checks):
            wanted.setdefault(checks[key].port, key)
        for port in [p for p in self._runners if wanted.get(p) != self._owner.get(p)]:
            await self._close(port)
        self.errors = {p: e for p, e in self.errors.items() if p in wanted}
        for port, key in wanted.items():
            if port not in self._runners:
                await self._open(port, key)

    async def _open(self, port: int, key: ObjectKey) -> None:
        async def handle(request: web.Request) -> web.Response:
            return self.response(key)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, port).start()
        except OSError as exc:
            await runner.cleanup()
            if self.errors.get(port) != str(exc):
                log.error("cannot serve the health check of %s/%s on port %d: %s", *key, port, exc)
            self.errors[port] = str(exc)
            return
        self.errors.pop(port, None)
        self._runners[port], self._owner[port] = runner, key
        log.info("health check of %s/%s served on port %d", key[0], key[1], port)

    async def _close(self, port: int) -> None:
        runner = self._runners.pop(port)
        key = self._owner.pop(port)
        await runner.cleanup()
        log.info("health check of %s/%s on port %d closed", key[0], key[1], port)

    async def stop(self) -> None:
        for port in list(self._runners):
            await self._close(port)

    def status(self) -> dict[str, object]:
        return {
            f"{self.host}:{port}": {
                "service": "/".join(key),
                "localEndpoints": self.checks[key].local_endpoints if key in self.checks else 0,
            }
            for port, key in sorted(self._owner.items())
        } | {f"{self.host}:{port}": f"not served: {error}" for port, error in self.errors.items()}
