"""The competitors, each able to load the cluster, change one endpoint, say its memory and
unload: kube-proxy's rules (iptables mode on the legacy and nft back ends, nftables mode)
and nfqproxy (its data paths, with their flags and --min-sync-period)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Protocol

from bench.scale.cluster import Cluster
from bench.scale.settings import (
    FLOOR_MODE,
    FLOOR_QUEUE,
    NFQPROXY_MODES,
    NODEPORT_BASE,
    NODEPORT_MAX,
    QUEUES,
    ProxyMode,
    RunSettings,
    modes_at,
)
from bench.traffic import rss_mb
from nfqproxy_lab import netns
from nfqproxy_lab.benchkit import datapath_unavailable, wait_for_line
from nfqproxy_lab.kube_proxy_rules import (
    NFT_DELETE,
    RESTORE_EMPTY,
    KubeService,
    nft_layout_refused,
    nft_restore_all,
    nft_restore_change,
    restore_all,
    restore_change,
)
from nfqproxy_lab.proxy import start_proxy, wait_ready
from nfqproxy_lab.served_api import ServedApi
from nfqproxy_lab.topology import NODE_IP, SERVICE_CIDR, Lab


class Competitor(Protocol):
    """One mode in a lab. load() programs the whole cluster and says how long it took
    (load_seconds, ready_seconds); change(number) moves the changing endpoint to its
    number-th port; unload() leaves the lab and the cluster as they were before load()."""

    def load(self) -> dict[str, float]: ...
    def change(self, number: int) -> None: ...
    def memory_mb(self) -> float: ...
    def unload(self) -> None: ...


def kernel_memory_bytes() -> int:
    """Slab and vmalloc: where iptables (legacy: vmalloc'd blobs) and nftables keep rules."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields.get("Slab", 0) + fields.get("VmallocUsed", 0)


class KubeProxyRules:
    """kube-proxy's rules in the kernel: loaded whole, then changed by partial
    transactions, as kube-proxy does. Subclasses name the tool and the rule texts."""

    command: tuple[str, ...]
    change_flags: tuple[str, ...] = ()
    remove_all: str

    def __init__(self, lab: Lab, cluster: Cluster) -> None:
        self.lab, self.cluster = lab, cluster
        self._memory = 0.0

    def render_all(self, services: list[KubeService]) -> str:
        raise NotImplementedError

    def render_change(self, services: list[KubeService], old: KubeService, new: KubeService) -> str:
        raise NotImplementedError

    def _run(self, text: str, *flags: str) -> None:
        netns.run(netns.exec_command(self.lab.node_ns, [*self.command, *flags]), stdin=text)

    def load(self) -> dict[str, float]:
        text = self.render_all(self.cluster.kube_services())
        before = kernel_memory_bytes()
        started = time.monotonic()
        self._run(text)
        seconds = time.monotonic() - started
        self._memory = (kernel_memory_bytes() - before) / 2**20
        return {"load_seconds": seconds, "ready_seconds": seconds}

    def change(self, number: int) -> None:
        old = self.cluster.kube_services()[-1]
        self.cluster.change = number
        services = self.cluster.kube_services()
        self._run(self.render_change(services, old, services[-1]), *self.change_flags)

    def memory_mb(self) -> float:
        return self._memory

    def unload(self) -> None:
        self._run(self.remove_all)
        self.cluster.change = None


class KubeProxyIptables(KubeProxyRules):
    """The iptables layout through iptables-restore; changes with --noflush."""

    change_flags = ("--noflush",)
    remove_all = RESTORE_EMPTY

    def __init__(self, lab: Lab, cluster: Cluster, backend: str) -> None:
        super().__init__(lab, cluster)
        self.command = (f"iptables-{backend}-restore",)

    def render_all(self, services: list[KubeService]) -> str:
        return restore_all(services)

    def render_change(self, services: list[KubeService], old: KubeService, new: KubeService) -> str:
        return restore_change(services, old, new)


class QueuedFirstPackets(KubeProxyIptables):
    """The floor of any design that decides first packets in userspace: kube-proxy's
    iptables layout (legacy back end) doing the DNAT, plus one NFQUEUE round trip for each
    connection's first packet, answered by bench/nfq_ceiling.c (accept, no decision, one
    batch verdict per read): what the offload path pays on top of the kernel's lookup,
    without its own work. One queue per CPU, spread by CPU (--queue-cpu-fanout), each
    answered by a process of its own, as offload-nq's worker threads are."""

    def __init__(self, lab: Lab, cluster: Cluster, ceiling: Path) -> None:
        super().__init__(lab, cluster, "legacy")
        self.ceiling = ceiling
        self.processes: list[subprocess.Popen[bytes]] = []

    def _queue_rules(self, action: str) -> list[list[str]]:
        """First packets to the service range, and to the node's NodePorts."""
        spread = ["--queue-balance", f"{FLOOR_QUEUE}:{FLOOR_QUEUE + QUEUES - 1}"]
        target = (
            [*spread, "--queue-cpu-fanout"] if QUEUES > 1 else ["--queue-num", str(FLOOR_QUEUE)]
        )
        last = NODEPORT_BASE + NODEPORT_MAX - 1
        matches = [
            ["-d", SERVICE_CIDR],
            ["-d", NODE_IP, "-p", "tcp", "--dport", f"{NODEPORT_BASE}:{last}"],
        ]
        return [
            [
                "iptables-legacy", "-t", "mangle", action, "PREROUTING", *match,
                "-m", "conntrack", "--ctstate", "NEW", "-j", "NFQUEUE", *target,
            ]
            for match in matches
        ]  # fmt: skip

    def load(self) -> dict[str, float]:
        loaded = super().load()
        for queue in range(FLOOR_QUEUE, FLOOR_QUEUE + QUEUES):
            command = netns.exec_command(self.lab.node_ns, [str(self.ceiling), str(queue)])
            process = self.lab.start_process(f"ceiling{queue}", command)
            self.processes.append(process)
            wait_for_line(self.lab.dir / f"ceiling{queue}.log", "ready", process)
        for rule in self._queue_rules("-A"):
            netns.run(netns.exec_command(self.lab.node_ns, rule))
        return loaded

    def unload(self) -> None:
        for rule in self._queue_rules("-D"):
            netns.run(netns.exec_command(self.lab.node_ns, rule), check=False)
        for process in self.processes:
            process.terminate()
            process.wait(10)
        self.processes = []
        super().unload()


class KubeProxyNftables(KubeProxyRules):
    """kube-proxy's nftables mode layout, loaded and changed with `nft -f` transactions."""

    command = ("nft", "-f", "-")
    remove_all = NFT_DELETE

    def render_all(self, services: list[KubeService]) -> str:
        return nft_restore_all(services, (NODE_IP,))

    def render_change(self, services: list[KubeService], old: KubeService, new: KubeService) -> str:
        return nft_restore_change(old, new)


class Nfqproxy:
    """nfqproxy with one data path, following the lab's API server; a change is the
    changing EndpointSlice updated there. With --min-sync-period 0 it syncs each change
    when its watch event comes: kube-proxy's rules here are restored at once too, with no
    kube-proxy process and so no sync period of its own. At the default (1 s), as
    deployed, a change that follows a sync by less than that waits for the period."""

    def __init__(self, lab: Lab, cluster: Cluster, api: ServedApi, mode: ProxyMode) -> None:
        self.lab, self.cluster, self.api, self.mode = lab, cluster, api, mode
        self.process: subprocess.Popen[bytes] | None = None

    def load(self) -> dict[str, float]:
        started = time.monotonic()
        self.process = start_proxy(
            self.lab,
            "--datapath",
            self.mode.datapath,
            *self.mode.flags,
            "--min-sync-period",
            f"{self.mode.min_sync_period:g}",
            api_server=self.api.url,
        )
        status = wait_ready(self.lab, self.process, timeout=300)
        return {
            "load_seconds": float(status["last_sync_seconds"]),
            "ready_seconds": time.monotonic() - started,
        }

    def change(self, number: int) -> None:
        self.cluster.change = number
        self.api.call(self.api.server.update("endpointslices", self.cluster.changing_slice()))

    def memory_mb(self) -> float:
        assert self.process is not None
        return rss_mb(self.process.pid)

    def unload(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None
        if self.cluster.change is not None:
            # The API server is shared by the modes: the next one starts from the same slice.
            self.cluster.change = None
            self.api.call(self.api.server.update("endpointslices", self.cluster.changing_slice()))


def unavailable_reason(mode: str) -> str | None:
    """Why this installation cannot run an nfqproxy mode, or None (nftables is checked in
    the lab, by runnable_modes)."""
    if mode == "offload-nq" and QUEUES < 2:
        return "one CPU: offload-nq would be offload-1q"
    return datapath_unavailable(NFQPROXY_MODES[mode].datapath) if mode in NFQPROXY_MODES else None


def runnable_modes(
    size: int, lab: Lab, settings: RunSettings, skipped: dict[str, str]
) -> list[str]:
    """The modes this lab runs at N = size, in MODES order: those asked for, but those this
    machine cannot take, which go into skipped with the reason."""
    modes = [m for m in modes_at(size, settings.sizes) if m in settings.modes]
    for mode in modes:
        if mode in skipped:
            continue
        reason = nft_layout_refused(lab.node_ns) if mode == "nftables" else unavailable_reason(mode)
        if reason:
            skipped[mode] = reason
            print(f"{mode} left out: {reason}", flush=True)
    return [m for m in modes if m not in skipped]


def make_competitor(mode: str, lab: Lab, api: ServedApi, cluster: Cluster) -> Competitor:
    if mode == "nftables":
        return KubeProxyNftables(lab, cluster)
    if mode == FLOOR_MODE:
        return QueuedFirstPackets(lab, cluster, lab.dir / "nfq_ceiling")
    if mode.startswith("iptables-"):
        return KubeProxyIptables(lab, cluster, mode.removeprefix("iptables-"))
    return Nfqproxy(lab, cluster, api, NFQPROXY_MODES[mode])
