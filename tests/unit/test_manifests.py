"""Loading and watching manifests: formats, errors that name file/object/field, last good state."""

from __future__ import annotations

import asyncio
import os
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml

from nfqproxy.sources.manifests import (
    ManifestError,
    ManifestObjects,
    ManifestSource,
    load_manifest_file,
)
from nfqproxy_lab.topology import lab_endpoint_slices, lab_services

CIDRS = [IPv4Network("10.96.0.0/12")]


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_a_kubectl_list_and_multi_document_yaml_load_alike(tmp_path: Path) -> None:
    as_list = load_manifest_file(write(tmp_path / "list.yaml", lab_services()), CIDRS)
    items = lab_services()["items"]
    assert isinstance(items, list)
    docs = "".join("---\n" + yaml.safe_dump(item) for item in items)
    as_docs = load_manifest_file(write(tmp_path / "docs.yaml", docs), CIDRS)
    assert as_list.services == as_docs.services and len(as_list.services) == 2


def test_a_list_mixing_services_and_slices_is_split_by_kind(tmp_path: Path) -> None:
    services, slices = lab_services(), lab_endpoint_slices([1, 2])
    both = {"apiVersion": "v1", "kind": "List", "items": [*services["items"], *slices["items"]]}
    loaded = load_manifest_file(write(tmp_path / "all.yaml", both), CIDRS)
    assert (len(loaded.services), len(loaded.endpoint_slices)) == (2, 1)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("a: [1, 2\n", "line 2, column 1", "invalid YAML"),
        ("- just\n- a list\n", "document 1", "expected a Kubernetes object"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
            "document 1 (Pod default/p)",
            "is not one of",
        ),
        ("apiVersion: v1\nkind: List\nitems: 5\n", "document 1 (List)", "items: must be a list"),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
            "spec: {clusterIP: 10.96.0.1, ports: [{port: 0}]}\n",
            "document 1 (Service default/s)",
            "spec.ports[0].port: 0 is out of range",
        ),
        ("\xff\xfe", "file", "not UTF-8"),
    ],
)
def test_a_bad_file_is_refused_naming_file_object_and_field(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ManifestError) as error:
        load_manifest_file(path, CIDRS)
    assert str(error.value).startswith(f"{path}: {where}")
    assert message in str(error.value)


def test_a_refused_file_keeps_its_last_good_objects_and_other_files_still_update(
    tmp_path: Path,
) -> None:
    services = write(tmp_path / "services.yaml", lab_services())
    slices = write(tmp_path / "slices.yaml", lab_endpoint_slices([1, 2, 3]))
    source = ManifestSource(tmp_path, CIDRS)
    assert source.refresh()
    write(services, "kind: [\n")
    write(slices, lab_endpoint_slices([1]))
    assert source.refresh()
    objects = source.objects()
    assert len(objects.services) == 2 and len(objects.endpoint_slices[0]["endpoints"]) == 1
    assert list(source.errors) == [services] and "invalid YAML" in source.errors[services]
    write(services, lab_services())
    source.refresh()
    assert source.errors == {}


def test_a_removed_file_withdraws_its_objects(tmp_path: Path) -> None:
    write(tmp_path / "services.yaml", lab_services())
    slices = write(tmp_path / "slices.yaml", lab_endpoint_slices([1]))
    source = ManifestSource(tmp_path, CIDRS)
    source.refresh()
    slices.unlink()
    assert source.refresh() and source.objects().endpoint_slices == []


def test_a_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        ManifestSource(tmp_path / "does-not-exist", CIDRS).refresh()


def test_watch_delivers_the_initial_state_and_then_each_change(tmp_path: Path) -> None:
    path = write(tmp_path / "services.yaml", lab_services())
    seen: list[int] = []

    async def scenario() -> None:
        async def on_change(objects: ManifestObjects) -> None:
            seen.append(len(objects.services))

        task = asyncio.create_task(ManifestSource(path, CIDRS).watch(on_change, interval=0.01))
        await asyncio.sleep(0.05)
        services = lab_services()
        services["items"] = services["items"][:1]
        write(path, services)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(seen) == 2:
                break
        task.cancel()

    asyncio.run(scenario())
    assert seen == [2, 1]


def test_the_same_object_in_two_files_is_loaded_from_both_for_the_controller_to_resolve(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", lab_services())
    write(tmp_path / "b.yaml", lab_services())
    source = ManifestSource(tmp_path, CIDRS)
    source.refresh()
    assert len(source.objects().services) == 4


def test_a_rewrite_in_place_that_keeps_size_and_time_is_seen_through_inotify(
    tmp_path: Path,
) -> None:
    """The gap of signature polling: the same inode, size and mtime. The backstop poll
    (here every 30 s) cannot see it; inotify does, within a second."""
    path = write(tmp_path / "services.yaml", lab_services())
    before = path.read_text()
    after = before.replace("port: 53", "port: 54")
    assert after != before and len(after) == len(before)
    ports: list[list[int]] = []

    async def scenario() -> None:
        async def on_change(objects: ManifestObjects) -> None:
            ports.append(sorted(p["port"] for s in objects.services for p in s["spec"]["ports"]))

        source = ManifestSource(tmp_path, CIDRS)
        task = asyncio.create_task(source.watch(on_change, interval=30.0))
        await asyncio.sleep(0.3)  # the watch is in place
        stat = path.stat()
        with path.open("r+") as file:
            file.write(after)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_ino == stat.st_ino and path.stat().st_size == stat.st_size
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(ports) == 2:
                break
        task.cancel()

    asyncio.run(scenario())
    assert len(ports) == 2 and 54 in ports[1] and 53 not in ports[1]


def test_a_file_removed_while_watched_withdraws_its_objects(tmp_path: Path) -> None:
    write(tmp_path / "services.yaml", lab_services())
    slices = write(tmp_path / "slices.yaml", lab_endpoint_slices([1]))
    counts: list[int] = []

    async def scenario() -> None:
        async def on_change(objects: ManifestObjects) -> None:
            counts.append(len(objects.endpoint_slices))

        task = asyncio.create_task(ManifestSource(tmp_path, CIDRS).watch(on_change, 30.0))
        await asyncio.sleep(0.3)
        slices.unlink()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(counts) == 2:
                break
        task.cancel()

    asyncio.run(scenario())
    assert counts == [1, 0]
