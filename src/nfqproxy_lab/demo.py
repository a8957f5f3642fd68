"""`nfqproxy demo`: the lab, the proxy, traffic, an endpoint removal, the inspection
commands, and a clean teardown."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter

from nfqproxy.controller import STATUS_INTERVAL, status_summary
from nfqproxy_lab import netns
from nfqproxy_lab.dualstack import WEB_VIP6
from nfqproxy_lab.netns import NetnsThread
from nfqproxy_lab.proxy import proxy_command, read_status, start_proxy, wait_ready
from nfqproxy_lab.topology import (
    CLIENT_IP,
    DNS_PORT,
    EXTERNAL_CLIENT_IP,
    HTTP_PORT,
    NODE_IP,
    NODEPORT,
    WEB_VIP,
    Lab,
    all_labs,
    backend_ip,
    lab_nodeport_manifest,
)
from nfqproxy_lab.traffic import KeepAlive, http_get, http_peers, http_split, udp_query

DEMO_LAB = "nfqdemo"


def _print_split(title: str, answers: Counter[str]) -> None:
    total = sum(answers.values())
    print(f"\n{title}: {total} new connections to {WEB_VIP}:{HTTP_PORT}")
    for name, count in sorted(answers.items()):
        print(f"  {name:<10} {count:>4}  {count / total:6.1%}  {'#' * round(40 * count / total)}")


def _fresh_status(lab: Lab) -> str:
    time.sleep(STATUS_INTERVAL * 1.5)  # the proxy writes its status file periodically
    return status_summary(read_status(lab))


def _wait_for_a_sync(lab: Lab, syncs: int) -> None:
    deadline = time.monotonic() + 5
    while read_status(lab).get("syncs", 0) == syncs and time.monotonic() < deadline:
        time.sleep(0.05)


def _node_port_from_outside(lab: Lab, backends: int, requests: int) -> None:
    """A NodePort service reached from the external client, under each traffic policy."""
    indexes = list(range(1, backends + 1))
    with NetnsThread(lab.external_ns) as outside:
        for policy, meaning in (
            ("Cluster", "any endpoint, the client masqueraded to the node"),
            ("Local", "this node's endpoints, the client's address kept"),
        ):
            syncs = read_status(lab).get("syncs", 0)
            (lab.manifests_dir / "web-np.yaml").write_text(lab_nodeport_manifest(indexes, policy))
            _wait_for_a_sync(lab, syncs)
            answers = outside.call(http_peers, NODE_IP, NODEPORT, requests)
            print(
                f"\nNodePort {NODE_IP}:{NODEPORT} from {EXTERNAL_CLIENT_IP}, outside the "
                f"cluster, externalTrafficPolicy {policy} ({meaning}):"
            )
            for (name, peer), count in sorted(answers.items()):
                print(f"  {name:<10} {count:>4}  saw the client as {peer}")
    (lab.manifests_dir / "web-np.yaml").unlink()


def _dual_stack(lab: Lab, requests: int) -> None:
    """The web service is dual-stack: one ClusterIP per family, each served from its own
    EndpointSlice, on whichever data path runs (every one serves both families)."""
    with NetnsThread(lab.client_ns) as client:
        for vip in (WEB_VIP, WEB_VIP6):
            answers = client.call(http_peers, vip, HTTP_PORT, requests)
            print(f"\nDual-stack service web on its ClusterIP {vip}:")
            for (name, peer), count in sorted(answers.items()):
                print(f"  {name:<10} {count:>4}  saw the client as {peer}")


# Above the ephemeral range (32768-60999): no connection the demo made before holds it.
DEMO_CLIENT_PORT = 61000


def _inspect(lab: Lab) -> None:
    """What an operator sees: `explain` names the backend a client port gets, `trace`
    shows that connection decided, and the backend that answers is the one named."""

    def nfqproxy(*args: str) -> list[str]:
        return [*proxy_command(), *args, "--socket", str(lab.control_socket)]

    source, service = f"{CLIENT_IP}:{DEMO_CLIENT_PORT}", f"{WEB_VIP}:{HTTP_PORT}"
    explained = netns.run(netns.exec_command(lab.client_ns, nfqproxy("explain", source, service)))
    print(f"\n$ nfqproxy explain {source} {service}\n{explained.rstrip()}")
    tracer = subprocess.Popen(
        netns.exec_command(lab.external_ns, nfqproxy("trace", "--service", "default/web")),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    watchdog = threading.Timer(15.0, tracer.kill)  # a line that never comes ends the wait
    watchdog.start()
    try:
        assert tracer.stdout is not None
        header = tracer.stdout.readline()  # written once the proxy traces for it
        with NetnsThread(lab.client_ns) as client:
            origin = (CLIENT_IP, DEMO_CLIENT_PORT)
            name = client.call(http_get, WEB_VIP, HTTP_PORT, 3.0, "/", origin)
        decided = tracer.stdout.readline()
    finally:
        watchdog.cancel()
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
        if tracer.stdout is not None:
            tracer.stdout.close()
    print(
        f"\n$ nfqproxy trace --service default/web    (one connection from port "
        f"{DEMO_CLIENT_PORT}, then Ctrl-C)\n{header.rstrip()}\n{decided.rstrip()}"
    )
    print(f"The connection was answered by {name} ({backend_ip(int(name.removeprefix('be')))}).")


def run_demo(backends: int = 3, requests: int = 300) -> int:
    if DEMO_LAB in all_labs():
        Lab.load(DEMO_LAB).down()  # a demo killed earlier left its lab behind
    lab = Lab(DEMO_LAB, backends, dual_stack=True)
    print(
        f"Building the lab: client, node, uplink, {backends} backends, an external client and "
        f"a second node with one more backend, IPv4 and IPv6 on every link (namespaces "
        f"{DEMO_LAB}-*)"
    )
    try:
        lab.up()
        proxy = start_proxy(lab)
        datapath = wait_ready(lab, proxy).get("datapath", "?")
        print(
            f"nfqproxy ({datapath} data path) is running in {lab.node_ns} (pid {proxy.pid}), "
            f"reading {lab.manifests_dir}"
        )
        with NetnsThread(lab.client_ns) as client:
            _print_split(
                "Split across backends", client.call(http_split, WEB_VIP, HTTP_PORT, requests)
            )
            print(
                f"\nUDP {WEB_VIP}:{DNS_PORT} from a connected socket answers: "
                + ", ".join(client.call(udp_query, WEB_VIP, DNS_PORT) for _ in range(5))
            )
            print("\n" + _fresh_status(lab))
            _node_port_from_outside(lab, backends, requests // 10)

            keep = client.call(KeepAlive, WEB_VIP, HTTP_PORT)
            pinned = client.call(keep.get)
            removed = next(i for i in range(1, backends + 1) if lab.backend_name(i) != pinned)
            print(
                f"\nAn open keep-alive connection (client port {keep.local_port}) is on {pinned}."
            )
            print(f"Removing endpoint be{removed} from the EndpointSlice manifest...")
            syncs = read_status(lab).get("syncs", 0)
            lab.write_manifests([i for i in range(1, backends + 1) if i != removed])
            _wait_for_a_sync(lab, syncs)
            _print_split(
                f"After removing be{removed}",
                client.call(http_split, WEB_VIP, HTTP_PORT, requests // 3),
            )
            print(
                f"\nThe open connection still answers from: {client.call(keep.get)} (was {pinned})"
            )
            client.call(keep.close)
        print("\n" + _fresh_status(lab))
        _dual_stack(lab, requests // 30)
        _inspect(lab)
        return 0
    except KeyboardInterrupt:
        print("\nInterrupted.")
        return 130
    finally:
        print("\nTearing the lab down.")
        lab.down()
