"""ICMP errors about proxied flows reach the client translated, inner header included:
a refused UDP port is refused through the VIP, and path MTU discovery works across a
narrower link behind the proxy."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
import yaml

from nfqproxy_lab import netns
from nfqproxy_lab.proxy import read_status
from nfqproxy_lab.topology import HTTP_PORT, WEB_VIP, backend_ip
from nfqproxy_lab.traffic import http_upload_digest
from tests.helpers.datapaths import datapath_params
from tests.helpers.labs import lab_with_proxy

pytestmark = pytest.mark.kernel
CLOSED_VIP = "10.96.0.40"


def closed_udp_service() -> str:
    """A UDP service whose one endpoint has nothing listening: its kernel answers with
    ICMP port unreachable."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "closed", "namespace": "default"},
        "spec": {
            "clusterIP": CLOSED_VIP,
            "ports": [{"name": "dns", "protocol": "UDP", "port": 53}],
        },
    }
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "closed-a",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "closed"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "dns", "protocol": "UDP", "port": 9999}],
        "endpoints": [{"addresses": [backend_ip(1)]}],
    }
    return yaml.safe_dump_all([service, endpoint_slice])


def ask_closed_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.connect((CLOSED_VIP, 53))
        sock.send(b"anyone?")
        try:
            sock.recv(512)
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        return "answered"


@pytest.mark.parametrize("datapath", datapath_params())
def test_a_port_unreachable_from_the_backend_refuses_the_clients_udp_socket(
    datapath: str,
) -> None:
    with lab_with_proxy("--datapath", datapath) as running:
        ports = read_status(running.lab)["service_ports"]
        (running.lab.manifests_dir / "closed.yaml").write_text(closed_udp_service())
        deadline = time.monotonic() + 3
        while read_status(running.lab).get("service_ports") != ports + 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert running.client.call(ask_closed_port) == "refused"
        if running.sees_every_packet:  # offload: conntrack translates the error (RELATED)
            time.sleep(0.6)  # one status write
            assert read_status(running.lab)["counters"].get("accept_icmp_error", 0) >= 1


@pytest.mark.parametrize("datapath", datapath_params())
def test_path_mtu_discovery_works_through_the_vip_over_a_narrower_backend_link(
    datapath: str,
) -> None:
    with lab_with_proxy("--datapath", datapath) as running:
        node = running.lab.node_ns
        for i in (1, 2, 3):  # the node's side only: backends still advertise a 1460 MSS
            netns.run(netns.exec_command(node, ["ip", "link", "set", f"to-be{i}", "mtu", "1280"]))
        body = bytes(range(256)) * 4096  # 1 MiB in segments the backend links cannot carry
        digest = running.client.call(http_upload_digest, WEB_VIP, HTTP_PORT, body, 15.0)
        assert digest == hashlib.sha256(body).hexdigest()
