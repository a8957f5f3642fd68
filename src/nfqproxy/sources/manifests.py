"""Services and EndpointSlices from Kubernetes YAML manifests on disk, watched for changes.

PATH is a file or a folder of *.yaml / *.yml / *.json files. Each file holds one or more
YAML documents: single objects, or Lists as `kubectl get -o yaml` writes them.

A file that does not parse or validate is reported with the file, the object and the field
at fault, and the objects it held before stay in force: one bad edit takes nothing away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from watchfiles import awatch

from nfqproxy.fields import ObjectError
from nfqproxy.model import IPNetwork, object_ref, parse_endpoint_slice, parse_service

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
KINDS = {("v1", "Service"), ("discovery.k8s.io/v1", "EndpointSlice")}
MAX_FILE_BYTES = 64 * 1024 * 1024

# libyaml's loader is 10x faster; PyYAML built without libyaml has only the Python one.
SafeLoader: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(ValueError):
    """One reason a manifest file was refused: file, object, field and what was wrong."""

    def __init__(self, path: Path, where: str, message: str) -> None:
        super().__init__(f"{path}: {where}: {message}")
        self.path = path


@dataclass
class ManifestObjects:
    services: list[Mapping[str, Any]] = field(default_factory=list)
    endpoint_slices: list[Mapping[str, Any]] = field(default_factory=list)


def _documents(path: Path) -> list[Any]:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ManifestError(path, "file", f"{size} bytes is over the {MAX_FILE_BYTES} byte limit")
    try:
        text = path.read_text(encoding="utf-8")
        return [doc for doc in yaml.load_all(text, Loader=SafeLoader) if doc is not None]
    except UnicodeDecodeError as exc:
        raise ManifestError(path, "file", f"not UTF-8 text ({exc.reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "file"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(path, where, f"invalid YAML: {problem}") from None


def _objects(path: Path, documents: Iterable[Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(position, object) for every object, with Lists flattened."""
    for index, doc in enumerate(documents):
        where = f"document {index + 1}"
        if not isinstance(doc, Mapping):
            raise ManifestError(
                path, where, f"expected a Kubernetes object, got {type(doc).__name__}"
            )
        kind = doc.get("kind")
        if isinstance(kind, str) and kind.endswith("List"):
            items = doc.get("items")
            if not isinstance(items, list):
                raise ManifestError(path, f"{where} ({kind})", "items: must be a list")
            for item_index, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise ManifestError(
                        path, f"{where} items[{item_index}]", "expected a Kubernetes object"
                    )
                yield f"{where} items[{item_index}]", item
        else:
            yield where, doc


def load_manifest_file(path: Path, service_cidrs: Iterable[IPNetwork]) -> ManifestObjects:
    """The Services and EndpointSlices of one file, all validated, or ManifestError."""
    cidrs = list(service_cidrs)
    loaded = ManifestObjects()
    for where, obj in _objects(path, _documents(path)):
        ref = f"{where} ({object_ref(obj)})"
        kind_key = (obj.get("apiVersion"), obj.get("kind"))
        if kind_key not in KINDS:
            raise ManifestError(
                path,
                ref,
                f"apiVersion/kind {kind_key[0]!r:.60}/{kind_key[1]!r:.60} is not one of "
                "v1/Service, discovery.k8s.io/v1/EndpointSlice",
            )
        try:
            if kind_key[1] == "Service":
                parse_service(obj, cidrs)
                loaded.services.append(obj)
            else:
                parse_endpoint_slice(obj)
                loaded.endpoint_slices.append(obj)
        except ObjectError as exc:
            raise ManifestError(path, ref, str(exc)) from None
    return loaded


FileSignature = tuple[int, int, int]  # (inode, size, mtime in ns)


class ManifestSource:
    """Watches PATH through inotify, with file signatures checked as a backstop; keeps
    each file's last good objects."""

    def __init__(self, path: Path, service_cidrs: Iterable[IPNetwork]) -> None:
        self.path = path
        self.service_cidrs = list(service_cidrs)
        self._signatures: dict[Path, FileSignature] = {}
        self._good: dict[Path, ManifestObjects] = {}
        self.errors: dict[Path, str] = {}

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(
                p
                for p in self.path.iterdir()
                if p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
        if self.path.exists():
            return [self.path]
        raise FileNotFoundError(f"manifest path {self.path} does not exist")

    def refresh(self, touched: Iterable[str] = ()) -> bool:
        """Re-reads files that changed, and those touched, by name (inotify saw them
        written: a rewrite in place of the same size within one timestamp tick keeps the
        signature). Returns whether the set of objects changed."""
        names = set(touched)
        files = self._files()
        changed = False
        for gone in set(self._signatures) - set(files):
            del self._signatures[gone]
            self.errors.pop(gone, None)
            changed |= self._good.pop(gone, None) is not None
            log.info("manifest %s removed; its objects are withdrawn", gone)
        for path in files:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # replaced between listing and stat; the next poll sees it
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if self._signatures.get(path) == signature and path.name not in names:
                continue
            self._signatures[path] = signature
            try:
                self._good[path] = load_manifest_file(path, self.service_cidrs)
            except (ManifestError, OSError) as exc:
                self.errors[path] = str(exc)
                kept = (
                    "keeping its last good objects"
                    if path in self._good
                    else "nothing loaded from it"
                )
                log.error("manifest refused: %s (%s)", exc, kept)
                continue
            self.errors.pop(path, None)
            changed = True
        return changed

    def objects(self) -> ManifestObjects:
        merged = ManifestObjects()
        for loaded in self._good.values():
            merged.services += loaded.services
            merged.endpoint_slices += loaded.endpoint_slices
        return merged

    async def watch(
        self, on_change: Callable[[ManifestObjects], Awaitable[None]], interval: float = 0.2
    ) -> None:
        """Calls on_change with all objects now and after every change, until cancelled.

        Changes are seen through inotify (watchfiles) on the manifests' folder, and the
        files are also checked every interval, as a backstop (a folder that appears
        later, a file system without inotify)."""
        self.refresh()
        await on_change(self.objects())
        folder = self.path if self.path.is_dir() else self.path.parent
        stop = asyncio.Event()
        try:
            async for changes in awatch(
                folder,
                stop_event=stop,
                debounce=50,  # ms: an editor's write and rename arrive as one change
                step=20,
                rust_timeout=int(interval * 1000),
                yield_on_timeout=True,  # an empty set: the backstop's turn
                recursive=False,
            ):
                await self._changed({Path(path).name for _, path in changes}, on_change)
        except OSError as exc:  # the folder is gone, or no inotify here
            log.warning("manifests at %s: no inotify (%s)", folder, exc)
        finally:
            stop.set()
        log.warning("manifests at %s: checking every %s s from now on", folder, interval)
        while True:
            await asyncio.sleep(interval)
            await self._changed(set(), on_change)

    async def _changed(
        self, touched: set[str], on_change: Callable[[ManifestObjects], Awaitable[None]]
    ) -> None:
        try:
            changed = self.refresh(touched)
        except OSError as exc:
            log.error(
                "cannot read manifests at %s: %s; keeping the last good state", self.path, exc
            )
            return
        if changed:
            await on_change(self.objects())
