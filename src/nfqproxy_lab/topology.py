"""`nfqproxy lab up` / `lab down`: build and remove the namespace lab.

    client (10.244.1.2) -- node -- backend i (10.244.1<i>.2), i = 1..K      (a pod each)
                            | 10.255.255.1: the node's address, where NodePorts answer
                          uplink (10.255.255.2): the node's default route, a namespace of
                            |    its own so that the route never points back at the client;
                            |    a router for the rest:
                            +-- external client (198.51.100.2), outside the cluster
                            +-- node2 (10.255.254.1) -- remote backend (10.244.200.2), a pod
                                on another node: the lab's "remote" endpoint

With dual_stack (`lab up --dual-stack`) every link carries an IPv6 address too, and the
Services are dual-stack (nfqproxy_lab.dualstack has the IPv6 plan).

Everything lives in namespaces named <lab>-*, joined by veth pairs; nothing touches the
machine's own namespace. State (namespaces, pids, manifests) is kept under
/run/nfqproxy/labs/<lab>/ so that `lab down` can remove a lab another process built.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nfqproxy.files import atomic_write
from nfqproxy_lab import dualstack, netns

log = logging.getLogger(__name__)

LABS_DIR = Path("/run/nfqproxy/labs")
LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")

SERVICE_CIDR = "10.96.0.0/12"
WEB_VIP = "10.96.0.10"
EMPTY_VIP = "10.96.0.20"
HTTP_PORT, HTTP_TARGET = 80, 8080
DNS_PORT, DNS_TARGET = 53, 5353
CLIENT_IP = "10.244.1.2"
NODE_NAME = "lab-node"
UPLINK_NODE_IP, UPLINK_IP = "10.255.255.1", "10.255.255.2"
NODE_IP = UPLINK_NODE_IP  # the node's primary address: its default route's source
CLUSTER_CIDR = "10.244.0.0/16"  # every pod, on either node
EXTERNAL_CLIENT_IP, EXTERNAL_GATEWAY = "198.51.100.2", "198.51.100.1"
NODE2_NAME, NODE2_IP, NODE2_UPLINK_IP = "lab-node2", "10.255.254.1", "10.255.254.2"
REMOTE_BACKEND_IP, REMOTE_BACKEND_GATEWAY = "10.244.200.2", "10.244.200.1"
REMOTE_BACKEND = "remote"
# Routed to the node by the uplink, as a cloud load balancer or a BGP speaker would: the
# lab's externalIPs and LoadBalancer ingress IPs come from these. (The service range is
# routed there too, so that a client outside the cluster can reach a ClusterIP.)
EXTERNAL_IPS_RANGE, INGRESS_RANGE = "192.0.2.0/24", "203.0.113.0/24"


def backend_ip(index: int) -> str:
    return f"10.244.{10 + index}.2"


@dataclass
class LabState:
    name: str
    backends: int
    namespaces: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    # Each process's start time (clock ticks since boot): proves a pid is still the
    # process we started, whatever program it runs, however pids are reused.
    started: dict[str, int] = field(default_factory=dict)
    dual_stack: bool = False


class Lab:
    def __init__(self, name: str = "nfqlab", backends: int = 3, dual_stack: bool = False) -> None:
        if not LAB_NAME.match(name):
            raise ValueError(f"lab name {name!r} must match {LAB_NAME.pattern}")
        if not 1 <= backends <= 200:
            raise ValueError(f"backends must be 1-200, got {backends}")
        self.name = name
        self.backends = backends
        self.dir = LABS_DIR / name
        self.state = LabState(name, backends, dual_stack=dual_stack)

    @property
    def dual_stack(self) -> bool:
        return self.state.dual_stack

    # names -----------------------------------------------------------------------------

    @property
    def client_ns(self) -> str:
        return f"{self.name}-client"

    @property
    def node_ns(self) -> str:
        return f"{self.name}-node"

    @property
    def uplink_ns(self) -> str:
        return f"{self.name}-uplink"

    @property
    def external_ns(self) -> str:
        return f"{self.name}-ext"

    @property
    def node2_ns(self) -> str:
        return f"{self.name}-node2"

    @property
    def remote_ns(self) -> str:
        return f"{self.name}-remote"

    def backend_ns(self, index: int) -> str:
        return f"{self.name}-be{index}"

    def backend_name(self, index: int) -> str:
        return f"be{index}"

    @property
    def manifests_dir(self) -> Path:
        return self.dir / "manifests"

    @property
    def control_socket(self) -> Path:
        """The lab proxy's inspection socket: its own, so that labs side by side (and a
        proxy on the host) do not take each other's."""
        return self.dir / "control.sock"

    @property
    def status_file(self) -> Path:
        return self.dir / "proxy-status.json"

    # life cycle ------------------------------------------------------------------------

    def _save(self) -> None:
        (self.dir / "state.json").write_text(json.dumps(asdict(self.state), indent=1))

    def _add_namespace(self, name: str) -> None:
        netns.add(name)
        self.state.namespaces.append(name)
        self._save()

    def up(self) -> None:
        """Builds the lab; on any failure removes what it built and re-raises."""
        if (self.dir / "state.json").exists() or any(netns.exists(n) for n in self._all_names()):
            raise RuntimeError(
                f"lab {self.name} already exists; run `nfqproxy lab down --name {self.name}`"
            )
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    def _all_names(self) -> list[str]:
        return [
            self.client_ns,
            self.node_ns,
            self.uplink_ns,
            *(self.backend_ns(i) for i in range(1, self.backends + 1)),
            self.external_ns,
            self.node2_ns,
            self.remote_ns,
        ]

    def _build(self) -> None:
        for name in self._all_names():
            self._add_namespace(name)
            if self.dual_stack:
                # Links made from now on skip duplicate address detection: their link-local
                # addresses, which neighbour discovery answers from, are usable at once.
                netns.sysctl(name, "net.ipv6.conf.default.accept_dad", "0")
        node = [
            f"link add to-client type veth peer name eth0 netns {self.client_ns}",
            f"link add uplink type veth peer name eth0 netns {self.uplink_ns}",
            "addr add 10.244.1.1/24 dev to-client",
            f"addr add {UPLINK_NODE_IP}/30 dev uplink",
            "link set to-client up",
            "link set uplink up",
        ]
        for i in range(1, self.backends + 1):
            node += [
                f"link add to-be{i} type veth peer name eth0 netns {self.backend_ns(i)}",
                f"addr add 10.244.{10 + i}.1/24 dev to-be{i}",
                f"link set to-be{i} up",
            ]
        node.append(f"route add default via {UPLINK_IP}")
        netns.ip_batch(self.node_ns, node + self._v6(dualstack.node_commands(self.backends)))
        netns.sysctl(self.node_ns, "net.ipv4.ip_forward", "1")
        netns.ip_batch(
            self.client_ns,
            [
                f"addr add {CLIENT_IP}/24 dev eth0",
                "link set eth0 up",
                "route add default via 10.244.1.1",
                *self._v6(dualstack.client_commands()),
            ],
        )
        self._build_outside()
        for i in range(1, self.backends + 1):
            netns.ip_batch(
                self.backend_ns(i),
                [
                    f"addr add {backend_ip(i)}/24 dev eth0",
                    "link set eth0 up",
                    f"route add default via 10.244.{10 + i}.1",
                    *self._v6(dualstack.backend_commands(i)),
                ],
            )
            self._start_server(self.backend_name(i), self.backend_ns(i))
        self._start_server(REMOTE_BACKEND, self.remote_ns)
        self.write_manifests(list(range(1, self.backends + 1)))
        self._wait_for_servers()

    def _build_outside(self) -> None:
        """The uplink as a router between the node, an external client and a second node
        whose pod is reachable through it; nfqproxy runs on the first node only."""
        netns.ip_batch(
            self.uplink_ns,
            [
                f"addr add {UPLINK_IP}/30 dev eth0",
                "link set eth0 up",
                f"link add to-ext type veth peer name eth0 netns {self.external_ns}",
                f"link add to-node2 type veth peer name eth0 netns {self.node2_ns}",
                f"addr add {EXTERNAL_GATEWAY}/24 dev to-ext",
                f"addr add {NODE2_UPLINK_IP}/30 dev to-node2",
                "link set to-ext up",
                "link set to-node2 up",
                f"route add {REMOTE_BACKEND_IP.rsplit('.', 1)[0]}.0/24 via {NODE2_IP}",
                f"route add {CLUSTER_CIDR} via {UPLINK_NODE_IP}",
                f"route add {EXTERNAL_IPS_RANGE} via {UPLINK_NODE_IP}",
                f"route add {INGRESS_RANGE} via {UPLINK_NODE_IP}",
                f"route add {SERVICE_CIDR} via {UPLINK_NODE_IP}",
                *self._v6(dualstack.uplink_commands()),
            ],
        )
        netns.sysctl(self.uplink_ns, "net.ipv4.ip_forward", "1")
        netns.ip_batch(
            self.external_ns,
            [
                f"addr add {EXTERNAL_CLIENT_IP}/24 dev eth0",
                "link set eth0 up",
                f"route add default via {EXTERNAL_GATEWAY}",
                *self._v6(dualstack.external_commands()),
            ],
        )
        netns.ip_batch(
            self.node2_ns,
            [
                f"addr add {NODE2_IP}/30 dev eth0",
                "link set eth0 up",
                f"link add to-pod type veth peer name eth0 netns {self.remote_ns}",
                f"addr add {REMOTE_BACKEND_GATEWAY}/24 dev to-pod",
                "link set to-pod up",
                f"route add default via {NODE2_UPLINK_IP}",
                *self._v6(dualstack.node2_commands()),
            ],
        )
        netns.sysctl(self.node2_ns, "net.ipv4.ip_forward", "1")
        netns.ip_batch(
            self.remote_ns,
            [
                f"addr add {REMOTE_BACKEND_IP}/24 dev eth0",
                "link set eth0 up",
                f"route add default via {REMOTE_BACKEND_GATEWAY}",
                *self._v6(dualstack.remote_commands()),
            ],
        )
        if self.dual_stack:
            for router in (self.node_ns, self.uplink_ns, self.node2_ns):
                netns.sysctl(router, dualstack.FORWARDING, "1")

    def _v6(self, commands: list[str]) -> list[str]:
        """The IPv6 commands of a namespace, in a dual-stack lab only."""
        return commands if self.dual_stack else []

    def _start_server(self, name: str, namespace: str) -> None:
        command = [
            sys.executable,
            "-m",
            "nfqproxy",
            "lab",
            "serve",
            "--name",
            name,
            "--tcp-port",
            str(HTTP_TARGET),
            "--udp-port",
            str(DNS_TARGET),
            "--ready-file",
            str(self.dir / f"{name}.ready"),
        ]
        self.start_process(name, netns.exec_command(namespace, command))

    def start_process(self, key: str, command: list[str]) -> subprocess.Popen[bytes]:
        """Starts a lab process, logging to the lab folder, and records its pid for `down`."""
        with open(self.dir / f"{key}.log", "ab") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.state.pids[key] = process.pid
        self.state.started[key] = _start_time(process.pid) or 0
        self._save()
        return process

    def _wait_for_servers(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        names = [self.backend_name(i) for i in range(1, self.backends + 1)] + [REMOTE_BACKEND]
        for name in names:
            ready = self.dir / f"{name}.ready"
            while not ready.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"backend server {name} did not start; see {self.dir}")
                time.sleep(0.05)

    def write_manifests(self, backend_indexes: list[int]) -> None:
        """Writes the lab's Services and its EndpointSlice with the given backends."""
        atomic_write(
            self.manifests_dir / "services.yaml", yaml.safe_dump(lab_services(self.dual_stack))
        )
        atomic_write(
            self.manifests_dir / "endpointslices.yaml",
            yaml.safe_dump(lab_endpoint_slices(backend_indexes, self.dual_stack)),
        )

    @classmethod
    def load(cls, name: str) -> Lab:
        lab_dir = LABS_DIR / name
        state = LabState(**json.loads((lab_dir / "state.json").read_text()))
        lab = cls(state.name, state.backends, state.dual_stack)
        lab.state = state
        return lab

    def down(self) -> None:
        """Stops the lab's processes and deletes its namespaces. Safe to repeat."""
        for key, pid in self.state.pids.items():
            _stop(pid, self.state.started.get(key, 0), key)
        for name in reversed(self.state.namespaces or self._all_names()):
            netns.delete(name)
        if self.dir.exists():
            for path in sorted(self.dir.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            self.dir.rmdir()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) from /proc/PID/stat, or None if the process is gone.

    The start time (field 22, clock ticks since boot) tells a process from a later one
    that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _start_time(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _is_ours(pid: int, started: int) -> bool:
    """Whether pid is still the live process the lab started (not a zombie, not reused)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[1] == started and stat[0] != "Z"


def _stop(pid: int, started: int, key: str, grace: float = 3.0) -> None:
    """Ends a process the lab started, by pid, after checking the pid is still that one."""
    if not _is_ours(pid, started):
        _reap(pid)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not _is_ours(pid, started):
            return
        time.sleep(0.05)
    log.warning("%s (pid %d) ignored SIGTERM; killing it", key, pid)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child: init reaps it
        os.waitpid(pid, os.WNOHANG)


def all_labs() -> list[str]:
    return sorted(p.name for p in LABS_DIR.iterdir()) if LABS_DIR.is_dir() else []


def lab_services(dual_stack: bool = False) -> dict[str, Any]:
    def service(name: str, vip: str, vip6: str) -> dict[str, Any]:
        families = {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"]}
        if dual_stack:
            families = {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": vip,
                "clusterIPs": [vip, vip6] if dual_stack else [vip],
                **families,
                "ports": [
                    {
                        "name": "http",
                        "protocol": "TCP",
                        "port": HTTP_PORT,
                        "targetPort": HTTP_TARGET,
                    },
                    {"name": "dns", "protocol": "UDP", "port": DNS_PORT, "targetPort": DNS_TARGET},
                ],
            },
        }

    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            service("web", WEB_VIP, dualstack.WEB_VIP6),
            service("empty", EMPTY_VIP, dualstack.EMPTY_VIP6),
        ],
    }


def lab_endpoint_slices(backend_indexes: list[int], dual_stack: bool = False) -> dict[str, Any]:
    """web's EndpointSlice, and in a dual-stack lab its IPv6 one: a slice per family, as
    the EndpointSlice controller writes them."""

    def endpoint_slice(name: str, family: str, address: Any) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": family,
            "endpoints": [
                {
                    "addresses": [address(i)],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": NODE_NAME,
                    "targetRef": {"kind": "Pod", "namespace": "default", "name": f"be{i}"},
                }
                for i in backend_indexes
            ],
            "ports": [
                {"name": "http", "protocol": "TCP", "port": HTTP_TARGET},
                {"name": "dns", "protocol": "UDP", "port": DNS_TARGET},
            ],
        }

    items = [endpoint_slice("web-lab", "IPv4", backend_ip)]
    if dual_stack:
        items.append(endpoint_slice("web-lab-v6", "IPv6", dualstack.backend_ip6))
    return {"apiVersion": "v1", "kind": "List", "items": items}


NODEPORT_VIP, NODEPORT = "10.96.0.50", 30080


def lab_nodeport_manifest(backend_indexes: list[int], external_policy: str = "Cluster") -> str:
    """A NodePort service, web-np, on the node's port 30080: the lab's backends on this
    node and the remote one on node2, as one Kubernetes YAML stream."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web-np", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "clusterIP": NODEPORT_VIP,
            "clusterIPs": [NODEPORT_VIP],
            "externalTrafficPolicy": external_policy,
            "ports": [{"name": "http", "protocol": "TCP", "port": HTTP_PORT, "nodePort": NODEPORT}],
        },
    }
    endpoints = [(backend_ip(i), NODE_NAME, f"be{i}") for i in backend_indexes]
    endpoints.append((REMOTE_BACKEND_IP, NODE2_NAME, REMOTE_BACKEND))
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-np-lab",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web-np"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": "default", "name": pod},
            }
            for ip, node, pod in endpoints
        ],
        "ports": [{"name": "http", "protocol": "TCP", "port": HTTP_TARGET}],
    }
    return yaml.safe_dump_all([service, endpoint_slice])
