"""Fuzzes the fast path's packet handling: any byte string, no crash, the reference's verdict.

    python -m bench.fuzz_datapath [--inputs N] [--seed S] [--compare-every K]

Inputs are mutations of valid packets in both directions (bit flips, byte sets, cuts,
splices, header fields set to edge values) and plain random bytes, fed to FastCore with
and without the partial-checksum flag. A crash in C ends the process, so the caller sees
it. Every K-th input also goes to the reference path, and the two must agree, their
traces of it included. The fuzzed core traces throughout, into a small ring that fills,
wraps and loses events.

IPv6 packets (extension-header chains among them, fragments, ICMPv6 errors) and SCTP ones
are in the corpus too, on a dual-stack service; every compared input must also get a
named verdict from the reference (no internal_error).
It prints one JSON line: inputs run, verdict counts, disagreements, the reference's
verdicts on the compared IPv6 and SCTP inputs, and its errors.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from ipaddress import IPv4Network, IPv6Network, ip_address

from nfqproxy.datapath.fast.datapath import FastDatapath
from nfqproxy.datapath.reference.datapath import ReferenceDatapath
from nfqproxy.model import Backend, ServicePort, Snapshot
from nfqproxy_lab.packets import (
    extension_header,
    fragment_header,
    icmp6_error,
    icmp_error,
    sctp_chunk,
    sctp_init_body,
    sctp_or_about_sctp,
    sctp_packet,
    tcp6_packet,
    tcp_packet,
    udp6_packet,
    udp_packet,
)

VIP, VIP6 = "10.96.0.10", "fd00:96::10"
BACKENDS = ["10.244.11.2", "10.244.12.2"]
BACKENDS6 = ["fd00:244:11::2", "fd00:244:12::2"]
CLIENT6 = "fd00:244:1::2"
RANGES: list[IPv4Network | IPv6Network] = [
    IPv4Network("10.96.0.0/12"),
    IPv6Network("fd00:96::/108"),
]


def snapshot(ipv6: bool = False) -> Snapshot:
    """web's ports on its IPv4 VIP, and with ipv6 on its IPv6 VIP too, with SCTP."""
    ports = {}
    families = [(VIP, BACKENDS)] + ([(VIP6, BACKENDS6)] if ipv6 else [])
    for address, backends in families:
        vip = ip_address(address)
        ports[(vip, "TCP", 80)] = ServicePort(
            "f/web:http", vip, "TCP", 80, tuple(Backend(ip_address(b), 8080) for b in backends)
        )
        ports[(vip, "UDP", 53)] = ServicePort(
            "f/web:dns",
            vip,
            "UDP",
            53,
            tuple(Backend(ip_address(b), 5353) for b in backends),
            affinity_seconds=60,  # so that the affinity table is fuzzed too
        )
        if ipv6:
            ports[(vip, "SCTP", 3868)] = ServicePort(
                "f/web:sctp",
                vip,
                "SCTP",
                3868,
                tuple(Backend(ip_address(b), 3869) for b in backends),
            )
    return Snapshot(ports)


def corpus6() -> list[bytes]:
    """IPv6 and SCTP seeds: extension-header chains, fragments, ICMPv6 errors."""
    chain = extension_header(60) + extension_header(44, 1)
    fragment = fragment_header(17, 0, True)
    seeds = [
        tcp6_packet(CLIENT6, 1000, VIP6, 80, 0x02, b"payload"),
        tcp6_packet(
            CLIENT6, 1001, VIP6, 80, 0x02, b"payload", chain + fragment_header(6, 0, False), 0
        ),
        udp6_packet(CLIENT6, 1002, VIP6, 53, b"query", fragment, 44),
        udp6_packet(CLIENT6, 1003, VIP6, 53, b"later", fragment_header(17, 9, False), 44),
        udp6_packet(BACKENDS6[0], 5353, CLIENT6, 1002, b"reply"),
        tcp6_packet(BACKENDS6[1], 8080, CLIENT6, 1000, 0x12, b"answer"),
        sctp_packet("10.244.1.2", 5000, VIP, 3868, 0, sctp_chunk(1, sctp_init_body(1))),
        sctp_packet(CLIENT6, 5000, VIP6, 3868, 0, sctp_chunk(1, sctp_init_body(2))),
    ]
    for icmp_type in (1, 2, 3, 4):
        quoted = tcp6_packet(CLIENT6, 1000, BACKENDS6[0], 8080, 0x10, b"payload" * 8)
        seeds.append(icmp6_error(BACKENDS6[0], CLIENT6, quoted, icmp_type, 0))
    return seeds


def corpus() -> list[bytes]:
    seeds = []
    for sport in (1000, 40000):
        for flags in (0x02, 0x10, 0x12, 0x11, 0x04):
            seeds.append(tcp_packet("10.244.1.2", sport, VIP, 80, flags, b"payload"))
            seeds.append(tcp_packet(BACKENDS[0], 8080, "10.244.1.2", sport, flags, b"answer"))
        seeds.append(udp_packet("10.244.1.2", sport, VIP, 53, b"query"))
        seeds.append(udp_packet(BACKENDS[1], 5353, "10.244.1.2", sport, b"reply"))
        # ICMP errors about flows to each backend, from the backend and from the node.
        for backend in BACKENDS:
            quoted = udp_packet("10.244.1.2", sport, backend, 5353, b"query")
            seeds.append(icmp_error(backend, "10.244.1.2", quoted, 3, 3))
            quoted = tcp_packet("10.244.1.2", sport, backend, 8080, 0x10, b"payload" * 8)
            seeds.append(icmp_error("10.244.0.1", "10.244.1.2", quoted, 3, 4, 68))
    seeds.append(tcp_packet("10.244.1.2", 2000, VIP, 80, 0x02, b"", ip_options=b"\x01\x01\x01\x00"))
    return seeds


EDGE_BYTES = (0x00, 0x01, 0x05, 0x0F, 0x40, 0x45, 0x4F, 0x50, 0x7F, 0x80, 0xF0, 0xFF)


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    choice = rng.random()
    if choice < 0.08:
        return rng.randbytes(rng.randrange(0, 96))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(6)
        if kind == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:
            data[rng.randrange(len(data))] = rng.choice(EDGE_BYTES)
        elif kind == 2:
            del data[rng.randrange(len(data) + 1) :]
        elif kind == 3:
            data += rng.randbytes(rng.randrange(1, 32))
        elif kind == 4 and len(data) >= 4:  # total length, IHL or TCP data offset at edges
            at = rng.choice((0, 2, 3, 32))
            if at < len(data):
                data[at] = rng.choice(EDGE_BYTES)
        else:
            other = rng.choice(seeds)
            cut = rng.randrange(min(len(data), len(other)) + 1)
            data = data[:cut] + other[cut:]
    return bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compare-every", type=int, default=10)
    args = parser.parse_args(argv)

    fast = FastDatapath(RANGES, capacity=4096)
    fast.apply(snapshot(ipv6=True))
    fast.trace_start(512)  # its ring fills, wraps and loses: all of it under the fuzz
    traced = 0
    rng = random.Random(args.seed)
    seeds = corpus() + corpus6()
    verdicts: Counter[str] = Counter()
    reference_verdicts: Counter[str] = Counter()  # the IPv6 and SCTP inputs'
    disagreements: list[str] = []
    reference_errors: list[str] = []
    started = time.monotonic()
    for n in range(args.inputs):
        data = mutate(rng, seeds)
        action, reason, _, _, _ = fast.core.process(data, 1000.0, rng.random() < 0.2)
        verdicts[f"{action}_{reason}"] += 1
        if n % 1000 == 999:
            traced += len(fast.trace_take()[0])
        if args.compare_every and n % args.compare_every == 0:
            # Separate tables would drift apart on flow state, so compare stateless verdicts
            # on a fresh pair: the parse and the first decision must match exactly.
            # Their traces of it must match too (one clock, so one time).
            pair: list[FastDatapath | ReferenceDatapath] = [
                FastDatapath(RANGES, capacity=8, clock=lambda: 1000.0),
                ReferenceDatapath(RANGES, capacity=8, clock=lambda: 1000.0),
            ]
            results = []
            for datapath in pair:
                datapath.apply(snapshot(ipv6=True))
                datapath.trace_start(4)
                v = datapath.process(data)
                results.append((v.action, v.reason, v.payload, datapath.trace_take()))
            if results[0] != results[1] and len(disagreements) < 10:
                disagreements.append(data.hex())
            action, reason = results[1][0].value, results[1][1]
            if len(data) >= 20 and (data[0] >> 4 == 6 or sctp_or_about_sctp(data)):
                reference_verdicts[f"{action}_{reason}"] += 1
            if reason == "internal_error" and len(reference_errors) < 10:
                reference_errors.append(data.hex())
    print(
        json.dumps(
            {
                "inputs": args.inputs,
                "seconds": round(time.monotonic() - started, 1),
                "decisions_traced": traced,
                "verdicts": dict(verdicts.most_common()),
                "disagreements": disagreements,
                "reference_verdicts": dict(reference_verdicts.most_common()),
                "reference_errors": reference_errors,
            }
        )
    )
    return 1 if disagreements or reference_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
