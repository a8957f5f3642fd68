"""The in-process API server follows the list/watch conventions; kubectl agrees."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from nfqproxy_lab.apiserver import FakeApiServer

SERVICES = "/api/v1/services"


def service(
    name: str, namespace: str = "default", ip: str = "10.96.0.10", **labels: str
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
    }


def scenario(
    test: Callable[[FakeApiServer, aiohttp.ClientSession], Awaitable[None]], **options: Any
) -> None:
    async def run() -> None:
        server = FakeApiServer(**options)
        await server.start()
        try:
            async with aiohttp.ClientSession(base_url=server.url) as session:
                await test(server, session)
        finally:
            await server.stop()

    asyncio.run(run())


async def get_json(session: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with session.get(path) as response:
        return response.status, await response.json(content_type=None)


async def watch_events(session: aiohttp.ClientSession, path: str) -> list[dict[str, Any]]:
    async with session.get(path) as response:
        assert response.status == 200
        return [json.loads(line) async for line in response.content if line.strip()]


def test_list_pages_with_limit_and_continue_at_one_resource_version() -> None:
    async def test(server: FakeApiServer, session: aiohttp.ClientSession) -> None:
        for i in range(5):
            await server.create("services", service(f"s{i}"))
        status, first = await get_json(session, f"{SERVICES}?limit=2")
        assert status == 200 and [i["metadata"]["name"] for i in first["items"]] == ["s0", "s1"]
        assert first["metadata"]["remainingItemCount"] == 3 and first["kind"] == "ServiceList"
        await server.create("services", service("s5"))  # after the list began
        names, token = [], first["metadata"]["continue"]
        while token:
            _, page = await get_json(session, f"{SERVICES}?limit=2&continue={token}")
            names += [i["metadata"]["name"] for i in page["items"]]
            token = page["metadata"].get("continue")
            assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        assert names[:3] == ["s2", "s3", "s4"]

    scenario(test)


def test_label_and_field_selectors_filter_as_kube_proxy_uses_them() -> None:
    async def test(server: FakeApiServer, session: aiohttp.ClientSession) -> None:
        await server.create("services", service("plain"))
        await server.create(
            "services", service("other", **{"service.kubernetes.io/service-proxy-name": "x"})
        )
        await server.create("services", service("headless", ip="None"))
        query = (
            "labelSelector=!service.kubernetes.io/service-proxy-name"
            "&fieldSelector=spec.clusterIP!=None"
        )
        _, listed = await get_json(session, f"{SERVICES}?{query}")
        assert [i["metadata"]["name"] for i in listed["items"]] == ["plain"]
        _, by_set = await get_json(
            session, f"{SERVICES}?labelSelector=service.kubernetes.io/service-proxy-name in (x,y)"
        )
        assert [i["metadata"]["name"] for i in by_set["items"]] == ["other"]
        status, error = await get_json(session, f"{SERVICES}?fieldSelector=spec.nope=1")
        assert status == 400 and error["kind"] == "Status" and error["reason"] == "BadRequest"

    scenario(test)


def test_a_server_that_refuses_a_field_selector_answers_400() -> None:
    async def test(server: FakeApiServer, session: aiohttp.ClientSession) -> None:
        status, error = await get_json(session, f"{SERVICES}?fieldSelector=spec.clusterIP!=None")
        assert status == 400 and "not supported" in error["message"]

    scenario(test, refused_field_selectors=frozenset({"spec.clusterIP"}))


def test_watch_streams_changes_from_a_resource_version_then_bookmarks_and_closes() -> None:
    async def test(server: FakeApiServer, session: aiohttp.ClientSession) -> None:
        created = await server.create("services", service("a"))
        since = created["metadata"]["resourceVersion"]

        async def changes() -> None:
            await asyncio.sleep(0.05)
            await server.update("services", service("a", ip="10.96.0.11"))
            await server.create("services", service("b", namespace="other"))
            await server.delete("services", "default", "a")

        task = asyncio.create_task(changes())
        events = await watch_events(
            session,
            f"{SERVICES}?watch=1&resourceVersion={since}&allowWatchBookmarks=true&timeoutSeconds=1",
        )
        await task
        kinds = [(e["type"], e["object"]["metadata"].get("name")) for e in events]
        assert kinds[:3] == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
        assert ("BOOKMARK", None) in kinds
        assert events[0]["object"]["kind"] == "Service"
        assert int(events[-1]["object"]["metadata"]["resourceVersion"]) >= int(
            events[2]["object"]["metadata"]["resourceVersion"]
        )

    scenario(test, bookmark_interval=0.2)


def test_a_change_that_leaves_the_selector_is_a_deletion_for_that_watch() -> None:
    async def test(server: FakeApiServer, session: aiohttp.ClientSession) -> None:
        created = await server.create("services", service("a"))

        async def relabel() -> None:
            await asyncio.sleep(0.05)
            await server.update(
                "services", service("a", **{"service.kubernetes.io/service-proxy-name": "x"})
            )

        task = asyncio.create_task(relabel())
        selector = "labelSelector=!service.kubernetes.io/service-proxy-name"
        events = await watch_events(
            session,
            f"{SERVICES}?watch=1&{selector}&resourceVersion={created['metadata']['resourceVersion']}&timeoutSeconds=0.5",
        )
        await task
        assert [e["type"] for e in events] == ["DELETED"]

    scenario(test)


@pytest.mark.parametrize("expired_as", ["http", "event"])
def test_a_watch_from_before_compaction_gets_410_expired(expired_as: str) -> None:
    async def test(server: FakeApiServer, session: aiohttp.ClientSession) -> None:
        old = await server.create("services", service("a"))
        await server.create("services", service("b"))
        await server.compact()
        path = f"{SERVICES}?watch=1&resourceVersion={old['metadata']['resourceVersion']}"
        if expired_as == "http":
            status, body = await get_json(session, path)
            assert status == 410 and body["code"] == 410 and body["reason"] == "Expired"
        else:
            events = await watch_events(session, path)
            assert events == [{"type": "ERROR", "object": events[0]["object"]}]
            assert events[0]["object"]["code"] == 410

    scenario(test, expired_as=expired_as)


def test_injected_faults_500_garbage_and_a_cut_stream() -> None:
    async def test(server: FakeApiServer, session: aiohttp.ClientSession) -> None:
        server.faults.errors, server.faults.garbage = 1, 1
        assert (await get_json(session, SERVICES))[0] == 500
        async with session.get(SERVICES) as response:
            with pytest.raises(ValueError):
                json.loads(await response.text())
        assert (await get_json(session, SERVICES))[0] == 200
        created = await server.create("services", service("a"))
        server.faults.cut_streams = 1

        async def change() -> None:
            await asyncio.sleep(0.05)
            await server.update("services", service("a", ip="10.96.0.12"))
            await server.update("services", service("a", ip="10.96.0.13"))

        task = asyncio.create_task(change())
        with pytest.raises(aiohttp.ClientPayloadError):
            await watch_events(
                session,
                f"{SERVICES}?watch=1&resourceVersion={created['metadata']['resourceVersion']}&timeoutSeconds=2",
            )
        await task

    scenario(test)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_lists_selects_and_watches_through_it() -> None:
    async def kubectl(server: FakeApiServer, *args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            "kubectl",
            f"--server={server.url}",
            "--request-timeout=10s",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode or 0, out.decode() + err.decode()

    async def test(server: FakeApiServer, session: aiohttp.ClientSession) -> None:
        for i in range(7):
            await server.create(
                "services",
                service(f"s{i}", namespace="ns" + str(i % 2), tier="web" if i < 3 else "db"),
            )
        code, out = await kubectl(server, "get", "services", "-A", "-o", "json", "--chunk-size=3")
        assert code == 0, out
        listed = json.loads(out)
        assert sorted(i["metadata"]["name"] for i in listed["items"]) == [f"s{i}" for i in range(7)]
        assert any("limit=3" in r and "continue=" in r for r in server.requests)
        code, out = await kubectl(server, "get", "svc", "-A", "-l", "tier=web", "-o", "name")
        assert code == 0 and sorted(out.split()) == ["service/s0", "service/s1", "service/s2"], out
        code, out = await kubectl(server, "get", "endpointslices", "-A", "-o", "json")
        assert code == 0 and json.loads(out)["items"] == []

        async def later() -> None:
            await asyncio.sleep(1.0)
            await server.create("services", service("late", namespace="ns0"))
            await asyncio.sleep(0.5)
            await server.compact()  # closes open watches, as a server does: kubectl exits

        task = asyncio.create_task(later())
        code, out = await kubectl(
            server, "get", "services", "-n", "ns0", "--watch-only", "-o", "name"
        )
        await task
        assert "service/late" in out, out

    scenario(test)
