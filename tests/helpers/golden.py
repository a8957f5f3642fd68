"""Golden scenarios: Kubernetes YAML and packets in, frontends and verdicts out.

A scenario file (tests/scenarios/*.yaml, described in the README there) is one YAML
stream: the Services and EndpointSlices, a `kind: Scenario` document with the steps, and
last a `kind: Expected` document, which run() must reproduce on every data path. With
UPDATE_GOLDEN=1 the Expected document is written from the reference data path; the rest
of the file is left as it was.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import dpkt
import yaml

from nfqproxy import defaults
from nfqproxy.datapath.frontends import table_key
from nfqproxy.datapath.interface import Datapath
from nfqproxy.model import ServicePortKey
from nfqproxy.sources.manifests import load_manifest_file
from nfqproxy.tracker import ChangeTracker
from nfqproxy_lab.packets import checksums_verify, tcp_packet, udp_packet
from tests.helpers.clock import FakeClock

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
EXPECTED_HEADER = (
    "---\n"
    "# Written by UPDATE_GOLDEN=1 from the reference data path; every data path must give\n"
    "# exactly this. Review each change to it by hand (tests/scenarios/README.md).\n"
)
_DOCUMENT_START = re.compile(r"^---[ \t]*(?:#.*)?$", re.M)
_PACKET = re.compile(r"(tcp|udp) ([\d.]+):(\d+) > ([\d.]+):(\d+)(?: ([SAFRP]+))?")
_REPLY = re.compile(r"reply (\d+)(?: ([SAFRP]+))?")
_TICK = re.compile(r"tick (\d+(?:\.\d+)?)")
_FLAGS = {
    "S": dpkt.tcp.TH_SYN,
    "A": dpkt.tcp.TH_ACK,
    "F": dpkt.tcp.TH_FIN,
    "R": dpkt.tcp.TH_RST,
    "P": dpkt.tcp.TH_PUSH,
}


@dataclass
class Scenario:
    path: Path
    kubernetes: list[str]  # the Service and EndpointSlice documents, as written
    steps: list[Any]
    node: str | None
    zone: str | None
    head: str  # the file up to the Expected document
    expected: dict[str, Any] | None


def scenario_files() -> list[Path]:
    return sorted(SCENARIOS.glob("*.yaml"))


def documents(text: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(offset, text, parsed) of each non-empty YAML document in text."""
    starts = [m.start() for m in _DOCUMENT_START.finditer(text)]
    found = []
    for start, end in zip([0, *starts], [*starts, len(text)], strict=True):
        doc = yaml.safe_load(text[start:end])
        if doc is not None:
            assert isinstance(doc, dict), f"not a mapping: {text[start:end]!r:.200}"
            found.append((start, text[start:end], doc))
    return found


def read(path: Path) -> Scenario:
    text = path.read_text()
    kubernetes: list[str] = []
    scenario: dict[str, Any] | None = None
    expected: dict[str, Any] | None = None
    head = text
    for start, chunk, doc in documents(text):
        assert expected is None, f"{path}: the Expected document must be the last"
        if doc.get("kind") == "Scenario":
            scenario = doc
        elif doc.get("kind") == "Expected":
            expected, head = doc, text[:start]
        else:
            kubernetes.append(chunk)
    assert scenario is not None, f"{path}: no `kind: Scenario` document"
    return Scenario(
        path,
        kubernetes,
        scenario.get("steps", []),
        scenario.get("node"),
        scenario.get("zone"),
        head,
        expected,
    )


class _Dumper(yaml.SafeDumper):
    """Mappings as blocks, lists of plain values on one line."""


def _list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(item, str | int | float) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)


def render(result: dict[str, Any]) -> str:
    """The YAML an Expected document holds, keys in the order built."""
    return yaml.dump(result, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def write_expected(scenario: Scenario, result: dict[str, Any]) -> None:
    """Puts result in the scenario's file as its Expected document; the rest stays."""
    head = scenario.head if scenario.head.endswith("\n") else scenario.head + "\n"
    text = head + EXPECTED_HEADER + render(result)
    if scenario.path.read_text() != text:
        scenario.path.write_text(text)


def _endpoint(address: bytes, port: int) -> str:
    return f"{ip_address(address)}:{port}"


def _frontend_order(key: ServicePortKey) -> tuple[int, int, str]:
    vip, protocol, port = key
    return (int(vip), port, protocol)


def frontend_row(datapath: Datapath, key: ServicePortKey) -> dict[str, Any] | str:
    """The frontend as the data path holds it, or "removed"."""
    frontend = datapath.frontend(table_key(key))
    if frontend is None:
        return "removed"
    return {
        "name": frontend.name,
        "backends": [_endpoint(*b) for b in frontend.backends],
        "draining": [_endpoint(*b) for b in frontend.draining],
        "affinity": frontend.affinity_seconds,
        "no_local_endpoints": frontend.no_local_endpoints,
    }


def manifest_name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')} {meta.get('namespace', 'default')}/{meta.get('name')}"


class Run:
    """One scenario on one data path: its tracker, its clock and the packets sent."""

    def __init__(self, scenario: Scenario, datapath: Datapath, clock: FakeClock, tmp: Path):
        self.scenario, self.datapath, self.clock, self.tmp = scenario, datapath, clock, tmp
        self.tracker = ChangeTracker(defaults.SERVICE_CIDRS, None, scenario.node, scenario.zone)
        self.objects: dict[str, str] = {}  # "Kind namespace/name" -> its document, as written
        self.sent: list[tuple[str, str, int, str, int] | None] = []  # per step: out 5-tuple

    def apply(self, chunks: list[str]) -> list[str]:
        """As kubectl apply: each object added, or replacing the one of its kind and name."""
        applied = []
        for chunk in chunks:
            for _, text, doc in documents(chunk):
                applied.append(manifest_name(doc))
                self.objects[applied[-1]] = text.removeprefix("---").lstrip("\n")
        return applied

    def sync(self) -> dict[str, Any]:
        """Every object in one manifest file, read as the manifest source reads it and
        handed to the tracker, then one sync as the controller's: the changes only."""
        path = self.tmp / "manifests.yaml"
        path.write_text("---\n".join(self.objects.values()))
        loaded = load_manifest_file(path, defaults.SERVICE_CIDRS)
        self.tracker.replace_all(loaded.services, loaded.endpoint_slices)
        changes = self.tracker.flush()
        changed = self.datapath.apply_changes(changes.ports)
        result: dict[str, Any] = {"changed": sorted(changed)}
        if changes.errors:
            result["errors"] = changes.errors
        frontends = result["frontends"] = {}
        for key in sorted(changes.ports, key=_frontend_order):
            vip, protocol, port = key
            frontends[f"{vip}:{port}/{protocol}"] = frontend_row(self.datapath, key)
        # The data path holds exactly the frontends the tracker wants, changed or not.
        for key, wanted in self.tracker.ports.items():
            assert self.datapath.frontend(table_key(key)) is not None, wanted
        assert self.datapath.status()["service_ports"] == len(self.tracker.ports)
        return result

    def packet(
        self, proto: str, src: str, sport: int, dst: str, dport: int, flags: str
    ) -> dict[str, Any]:
        """Sends one packet; its verdict, and the packet the data path let out."""
        if proto == "udp":
            raw = udp_packet(src, sport, dst, dport)
        else:
            raw = tcp_packet(src, sport, dst, dport, sum(_FLAGS[f] for f in flags))
        verdict = self.datapath.process(raw)
        result: dict[str, Any] = {"verdict": f"{verdict.action.value} {verdict.reason}"}
        if verdict.payload is not None:
            assert checksums_verify(verdict.payload), verdict
            ip = dpkt.ip.IP(verdict.payload)
            out = (proto, str(ip_address(ip.src)), ip.data.sport, str(ip_address(ip.dst)))
            self.sent[-1] = (*out, ip.data.dport)
            result["out"] = f"{out[1]}:{out[2]} > {out[3]}:{ip.data.dport}"
        if verdict.proxied:
            result["proxied"] = True
        if verdict.masquerade:
            result["masquerade"] = True
        return result

    def step(self, step: Any) -> dict[str, Any]:
        self.sent.append(None)
        if isinstance(step, dict) and set(step) == {"apply"}:
            applied = self.apply([step["apply"]])
            return {"step": f"apply {', '.join(applied)}", **self.sync()}
        if isinstance(step, dict) and set(step) == {"delete"}:
            names = [step["delete"]] if isinstance(step["delete"], str) else step["delete"]
            for name in names:
                assert self.objects.pop(name, None) is not None, f"delete: no {name}"
            return {"step": f"delete {', '.join(names)}", **self.sync()}
        assert isinstance(step, str), f"unknown step {step!r}"
        result: dict[str, Any] = {"step": step}
        if m := _PACKET.fullmatch(step):
            proto, src, sport, dst, dport, flags = m.groups()
            return result | self.packet(proto, src, int(sport), dst, int(dport), flags or "S")
        if m := _REPLY.fullmatch(step):
            number = int(m.group(1))
            earlier = self.sent[number - 1] if 0 < number < len(self.sent) else None
            assert earlier is not None, f"{step}: step {number} let no packet out"
            proto, client, cport, backend, bport = earlier
            flags = (m.group(2) or "A") if proto == "tcp" else ""
            result["sent"] = f"{proto} {backend}:{bport} > {client}:{cport} {flags}".rstrip()
            return result | self.packet(proto, backend, bport, client, cport, flags)
        if m := _TICK.fullmatch(step):
            self.clock.advance(float(m.group(1)))
            return result
        if step == "expire":
            return result | {"expired": self.datapath.expire()}
        raise AssertionError(f"unknown step {step!r}")

    def run(self) -> dict[str, Any]:
        self.apply(self.scenario.kubernetes)
        result: dict[str, Any] = {"kind": "Expected", **self.sync()}
        result["steps"] = [self.step(step) for step in self.scenario.steps]
        result["counters"] = {k: v for k, v in sorted(self.datapath.counters.items()) if v}
        return result


def run(scenario: Scenario, make: Callable[[FakeClock], Datapath], tmp: Path) -> dict[str, Any]:
    """What the scenario gives on the data path make builds on the clock it is given."""
    clock = FakeClock()
    return Run(scenario, make(clock), clock, tmp).run()
