"""Malformed packets sent at a VIP from raw sockets in the lab.

Each kind has a defined fate, documented in docs/design.md:
- a truncated TCP header reaches the queue and is dropped, counted as
  drop_truncated_l4_header;
- IP options are proxied like any packet, counted as ip_options;
- fragments are reassembled by the node's conntrack defrag before the queue and the whole
  datagram is proxied;
- a bad IHL or a truncated IP header never reaches any hook: the node's IP input drops it
  and counts it in InHdrErrors (a raw IP socket refuses to send one at all, so these go
  out as Ethernet frames).
The proxy keeps serving through all of it.
"""

from __future__ import annotations

import json
import socket
import time

import dpkt
import pytest

from nfqproxy_lab import netns
from nfqproxy_lab.packets import addr, tcp_packet, udp_packet
from nfqproxy_lab.proxy import read_status
from nfqproxy_lab.topology import CLIENT_IP, DNS_PORT, HTTP_PORT, WEB_VIP
from nfqproxy_lab.traffic import http_split
from tests.helpers.labs import RunningLab

pytestmark = pytest.mark.kernel


def send_raw_ip(packet: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        sock.sendto(packet, (WEB_VIP, 0))


def send_frame(interface: str, frame: bytes) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((interface, 0))
        sock.send(frame)


def mac_of(namespace: str, interface: str) -> bytes:
    link = json.loads(netns.run(["ip", "-j", "-n", namespace, "link", "show", "dev", interface]))
    return bytes.fromhex(link[0]["address"].replace(":", ""))


def ip_counter(namespace: str, name: str) -> int:
    lines = [
        line.split()
        for line in netns.run(netns.exec_command(namespace, ["cat", "/proc/net/snmp"])).splitlines()
        if line.startswith("Ip:")
    ]
    return int(dict(zip(lines[0], lines[1], strict=True))[name])


def counters_after(
    running: RunningLab, name: str, at_least: int, timeout: float = 3.0
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counters: dict[str, int] = {}
    while time.monotonic() < deadline:
        counters = read_status(running.lab).get("counters", {})
        if counters.get(name, 0) >= at_least:
            break
        time.sleep(0.1)
    return counters


def test_a_truncated_tcp_header_is_dropped_and_counted(running_lab: RunningLab) -> None:
    before = read_status(running_lab.lab).get("counters", {}).get("drop_truncated_l4_header", 0)
    packet = bytes(
        dpkt.ip.IP(src=addr(CLIENT_IP), dst=addr(WEB_VIP), p=6, ttl=64, data=b"\x00" * 8)
    )
    invalid = invalid_drops(running_lab)
    running_lab.client.call(send_raw_ip, packet)
    if not running_lab.sees_every_packet:
        # Conntrack finds no TCP header: INVALID, never NEW, so never queued; the FORWARD
        # rule drops it (docs/design.md, "The offload path").
        deadline = time.monotonic() + 2
        while invalid_drops(running_lab) == invalid and time.monotonic() < deadline:
            time.sleep(0.05)
        assert invalid_drops(running_lab) == invalid + 1
        return
    counters = counters_after(running_lab, "drop_truncated_l4_header", before + 1)
    assert counters.get("drop_truncated_l4_header") == before + 1, counters


def invalid_drops(running_lab: RunningLab) -> int:
    """Packets the node's NFQPROXY-FORWARD rule dropped as conntrack INVALID."""
    listing = netns.run(
        netns.exec_command(
            running_lab.lab.node_ns,
            ["iptables", "-t", "filter", "-L", "NFQPROXY-FORWARD", "-v", "-x", "-n"],
        )
    )
    return sum(int(line.split()[0]) for line in listing.splitlines() if "DROP" in line)


def _options_flow(packet: bytes) -> bytes:
    # Listen for the backend's answer on the client side: a SYN-ACK, from the VIP.
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as listener:
        listener.settimeout(2)
        send_raw_ip(packet)
        while True:
            answer: bytes = listener.recv(2048)
            ip = dpkt.ip.IP(answer)
            if ip.src == addr(WEB_VIP) and ip.data.dport == 41000:
                return answer


def test_a_packet_with_ip_options_is_proxied_and_counted(running_lab: RunningLab) -> None:
    before = read_status(running_lab.lab).get("counters", {}).get("ip_options", 0)
    packet = tcp_packet(CLIENT_IP, 41000, WEB_VIP, HTTP_PORT, ip_options=b"\x01\x01\x01\x00")
    answer = dpkt.ip.IP(running_lab.client.call(_options_flow, packet))
    assert answer.data.sport == HTTP_PORT
    assert answer.data.flags & dpkt.tcp.TH_SYN and answer.data.flags & dpkt.tcp.TH_ACK
    assert counters_after(running_lab, "ip_options", before + 1).get("ip_options") == before + 1


def _fragmented_query() -> tuple[str, bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind((CLIENT_IP, 42000))
        receiver.settimeout(2)
        whole = dpkt.ip.IP(udp_packet(CLIENT_IP, 42000, WEB_VIP, DNS_PORT, b"f" * 64))
        body = bytes(whole.data)
        first = dpkt.ip.IP(src=whole.src, dst=whole.dst, p=17, id=4242, ttl=64, data=body[:40])
        first.mf = 1
        second = dpkt.ip.IP(src=whole.src, dst=whole.dst, p=17, id=4242, ttl=64, data=body[40:])
        second.offset = 40 // 8  # the header field counts 8-byte units
        send_raw_ip(bytes(first))
        send_raw_ip(bytes(second))
        data, peer = receiver.recvfrom(100)
        return peer[0], data


def test_fragments_are_reassembled_before_the_queue_and_proxied_whole(
    running_lab: RunningLab,
) -> None:
    peer, answer = running_lab.client.call(_fragmented_query)
    assert peer == WEB_VIP and answer in {b"be1", b"be2", b"be3"}


def test_a_bad_ihl_and_a_truncated_ip_header_are_dropped_by_the_node_before_any_hook(
    running_lab: RunningLab,
) -> None:
    lab = running_lab.lab
    ethernet = mac_of(lab.node_ns, "to-client") + mac_of(lab.client_ns, "eth0") + b"\x08\x00"
    good = tcp_packet(CLIENT_IP, 43000, WEB_VIP, HTTP_PORT)
    bad_ihl = bytes([0x43]) + good[1:]
    truncated = good[:12]
    before = ip_counter(lab.node_ns, "InHdrErrors")
    for packet in (bad_ihl, truncated):
        running_lab.client.call(send_frame, "eth0", ethernet + packet)
    deadline = time.monotonic() + 2
    while ip_counter(lab.node_ns, "InHdrErrors") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ip_counter(lab.node_ns, "InHdrErrors") == before + 2


def test_the_proxy_survives_and_keeps_serving_after_malformed_input(
    running_lab: RunningLab,
) -> None:
    assert running_lab.proxy is not None and running_lab.proxy.poll() is None
    answers = running_lab.client.call(http_split, WEB_VIP, HTTP_PORT, 9)
    assert sum(answers.values()) == 9 and set(answers) <= {"be1", "be2", "be3"}
    assert "drop_internal_error" not in read_status(running_lab.lab).get("counters", {})
