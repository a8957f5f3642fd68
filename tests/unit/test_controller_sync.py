"""The controller's sync: changes only, and a full catch-up after a failed sync."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address
from typing import Any

import pytest

from nfqproxy import controller
from nfqproxy.controller import Proxy, ProxyConfig
from nfqproxy.datapath.frontends import table_key
from nfqproxy.datapath.reference.datapath import ReferenceDatapath
from nfqproxy.sources.manifests import ManifestObjects
from tests.helpers.objects import endpoint_slice, report, service


def proxy() -> Proxy:
    return Proxy(
        ProxyConfig(datapath="reference", install_hooks=False, healthz_bind=None, metrics_bind=None)
    )


def backends(datapath: Any, vip: str) -> list[tuple[bytes, int]]:
    return list(datapath._frontends[table_key((ip_address(vip), "TCP", 80))].backends)


def test_a_sync_programs_only_what_changed_since_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controller = proxy()
    report(controller.tracker, service("a", "10.96.0.10"), service("b", "10.96.0.11"))
    asyncio.run(controller.sync())
    applied: list[list[Any]] = []
    real_apply = ReferenceDatapath.apply_changes

    def recording(self: ReferenceDatapath, changes: Any) -> list[str]:
        applied.append(list(changes))
        return real_apply(self, changes)

    monkeypatch.setattr(ReferenceDatapath, "apply_changes", recording)
    report(controller.tracker, endpoint_slice("a-1", "a", "10.1.0.1"))
    asyncio.run(controller.sync())
    assert applied == [[(ip_address("10.96.0.10"), "TCP", 80)]]
    assert controller.syncs == 2


def test_after_a_failed_sync_the_next_one_catches_up_on_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controller = proxy()
    report(controller.tracker, service("a", "10.96.0.10"), endpoint_slice("a-1", "a", "10.1.0.1"))
    asyncio.run(controller.sync())

    def failing(self: ReferenceDatapath, changes: Any) -> list[str]:
        raise MemoryError("no room for the tables")

    with monkeypatch.context() as patch:
        patch.setattr(ReferenceDatapath, "apply_changes", failing)
        report(controller.tracker, endpoint_slice("a-1", "a", "10.1.0.1", "10.1.0.2"))
        with pytest.raises(MemoryError):
            asyncio.run(controller.sync())
    assert len(backends(controller.datapath, "10.96.0.10")) == 1  # the last good table
    asyncio.run(controller.sync())  # nothing new was reported, yet the change lands
    assert len(backends(controller.datapath, "10.96.0.10")) == 2


class SyncedKube:
    async def wait_synced(self) -> None:
        return None


class FirstSync(Exception):
    """Ends the runner in these tests, where it would otherwise run until cancelled."""


def first_sync_after(zone_lookup: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[float, Proxy]:
    """Seconds from the lists being in to the runner starting, with this zone lookup."""
    monkeypatch.setattr(controller, "node_zone", zone_lookup)
    monkeypatch.setattr(controller, "ZONE_GRACE", 0.2)
    subject = Proxy(
        ProxyConfig(
            datapath="reference",
            install_hooks=False,
            healthz_bind=None,
            metrics_bind=None,
            node_name="node-a",
        )
    )
    subject.kube = SyncedKube()  # type: ignore[assignment]

    async def scenario() -> float:
        started = asyncio.get_running_loop().time()

        async def runner() -> None:
            subject.ready = True
            await asyncio.sleep(0.3)  # the zone may arrive meanwhile
            raise FirstSync

        subject.runner.run = runner  # type: ignore[method-assign]
        subject.runner.pending = False
        try:
            await subject._run_after_sync(object())
        except* FirstSync:
            pass
        return asyncio.get_running_loop().time() - started - 0.3

    return asyncio.run(scenario()), subject


def test_a_zone_lookup_that_never_answers_holds_the_first_sync_for_a_grace_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def never(client: object, node: str) -> str | None:
        await asyncio.sleep(3600)
        return None

    waited, subject = first_sync_after(never, monkeypatch)
    assert 0.15 < waited < 0.6 and subject.node_zone is None


def test_a_zone_that_arrives_after_the_first_sync_asks_for_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def late(client: object, node: str) -> str | None:
        await asyncio.sleep(0.25)
        return "zone-a"

    _, subject = first_sync_after(late, monkeypatch)
    assert subject.node_zone == "zone-a" and subject.runner.pending


def test_manifests_read_again_unchanged_ask_for_no_sync() -> None:
    """A sync spent on a file rewritten unchanged would hold back, by the minimum sync
    interval, a real change arriving just after it (the lab rewrites its services file
    with its slices)."""
    subject = proxy()

    def manifests(*addresses: str) -> ManifestObjects:
        return ManifestObjects(
            [service("web", "10.96.0.10")], [endpoint_slice("web-a", "web", *addresses)]
        )

    asyncio.run(subject.on_change(manifests("10.1.0.1")))
    subject.runner.pending = False
    asyncio.run(subject.on_change(manifests("10.1.0.1")))  # new dicts, the same content
    assert not subject.runner.pending
    asyncio.run(subject.on_change(manifests("10.1.0.2")))
    assert subject.runner.pending


def test_a_status_file_that_cannot_be_written_is_logged_and_the_proxy_goes_on(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk, or a bug in one status section, must not stop the routing."""
    unwritable = tmp_path / "status-is-a-folder"
    unwritable.mkdir()
    controller = Proxy(
        ProxyConfig(
            datapath="reference",
            install_hooks=False,
            healthz_bind=None,
            metrics_bind=None,
            status_file=unwritable,
        )
    )
    report(controller.tracker, service("a", "10.96.0.10"))
    asyncio.run(controller.sync())
    controller.write_status()
    assert "cannot write the status file" in caplog.text
