"""SCTP through a ClusterIP, on both families: INIT reaches the backend DNATed, INIT ACK
comes back from the VIP, DATA follows the association.

This machine's kernel has no SCTP sockets (no IPPROTO_SCTP endpoint), so the test builds
the packets itself and sends and receives them on raw sockets in the client and backend
namespaces. Conntrack does track SCTP: it checks each packet's CRC32c and verification
tags on the node, and drops what fails (NFQPROXY-FORWARD drops INVALID), so a wrong
checksum after the rewrite fails this test."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
import yaml

from nfqproxy.datapath import factory
from nfqproxy_lab.dualstack import CLIENT_IP6, backend_ip6
from nfqproxy_lab.netns import NetnsThread
from nfqproxy_lab.packets import (
    sctp_checksum_verifies,
    sctp_chunk,
    sctp_common,
    sctp_init_body,
)
from nfqproxy_lab.proxy import read_status
from nfqproxy_lab.topology import CLIENT_IP, backend_ip
from tests.helpers.datapaths import datapath_params
from tests.helpers.labs import RunningLab, lab_with_proxy

pytestmark = pytest.mark.kernel
VIPS = {4: "10.96.0.60", 6: "fd00:96::60"}
PORT, TARGET = 3868, 3869
IPPROTO_SCTP = 132


def sctp_service() -> str:
    """A dual-stack SCTP service whose one endpoint is be1."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "diameter", "namespace": "default"},
        "spec": {
            "ipFamilyPolicy": "RequireDualStack",
            "clusterIPs": [VIPS[4], VIPS[6]],
            "ports": [{"name": "diameter", "protocol": "SCTP", "port": PORT}],
        },
    }
    slices = [
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"diameter-v{family}",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "diameter"},
            },
            "addressType": f"IPv{family}",
            "ports": [{"name": "diameter", "protocol": "SCTP", "port": TARGET}],
            "endpoints": [{"addresses": [address]}],
        }
        for family, address in ((4, backend_ip(1)), (6, backend_ip6(1)))
    ]
    return yaml.safe_dump_all([service, *slices])


@pytest.fixture(scope="module", params=datapath_params())
def sctp_lab(request: pytest.FixtureRequest) -> Iterator[RunningLab]:
    name: str = request.param
    implementation = factory.DATAPATHS[name]
    if IPPROTO_SCTP not in implementation.protocols or 6 not in implementation.families:
        pytest.skip(f"the {name} data path does not proxy SCTP over both families yet")
    with lab_with_proxy("--datapath", name, dual_stack=True) as running:
        ports = read_status(running.lab)["service_ports"]
        (running.lab.manifests_dir / "diameter.yaml").write_text(sctp_service())
        deadline = time.monotonic() + 3
        while read_status(running.lab)["service_ports"] != ports + 2:
            assert time.monotonic() < deadline, "the SCTP service was not synced"
            time.sleep(0.05)
        yield running


def raw_socket(family: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW, 132)
    sock.settimeout(3.0)
    return sock


def receive(sock: socket.socket, family: int, chunk_type: int) -> tuple[str, bytes]:
    """(source address, SCTP packet) of the next SCTP packet carrying that chunk type.
    An IPv4 raw socket hands over the IP header too; an IPv6 one does not."""
    while True:
        data, (source, *_) = sock.recvfrom(65535)
        segment = data[(data[0] & 0x0F) * 4 :] if family == 4 else data
        if len(segment) > 12 and segment[12] == chunk_type:
            return str(ip_address(source)), segment


@pytest.mark.parametrize("family", [4, 6])
def test_an_sctp_association_through_the_vip(sctp_lab: RunningLab, family: int) -> None:
    vip, client_ip = VIPS[family], CLIENT_IP if family == 4 else CLIENT_IP6
    with NetnsThread(sctp_lab.lab.backend_ns(1)) as backend:
        server = backend.call(raw_socket, family)
        client = sctp_lab.client.call(raw_socket, family)
        try:
            sport = 40000 + family
            init = sctp_common(sport, PORT, 0, sctp_chunk(1, sctp_init_body(0xA1)))
            client.sendto(init, (vip, 0))
            source, got = receive(server, family, 1)
            assert source == client_ip
            assert int.from_bytes(got[2:4], "big") == TARGET and sctp_checksum_verifies(got)

            ack = sctp_common(TARGET, sport, 0xA1, sctp_chunk(2, sctp_init_body(0xB2)))
            server.sendto(ack, (client_ip, 0))
            source, got = receive(client, family, 2)
            assert source == vip, "the INIT ACK must come from the VIP"
            assert int.from_bytes(got[:2], "big") == PORT and sctp_checksum_verifies(got)

            data = sctp_chunk(0, bytes(12) + b"hello", flags=3)
            client.sendto(sctp_common(sport, PORT, 0xB2, data), (vip, 0))
            _, got = receive(server, family, 0)
            assert got.endswith(b"hello" + bytes(3)) and sctp_checksum_verifies(got)
        finally:
            server.close()
            client.close()
