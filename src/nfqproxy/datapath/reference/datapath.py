"""The reference data path: one packet in, one verdict out, in plain Python.

It is the executable specification of nfqproxy's packet handling. process() is a pure
function of the packet, the tables and the clock, so tests can drive it with byte strings
and the fast path can be compared with it packet for packet.

Request (destination in the service range, or a NodePort, external or ingress address and
port the tables hold):
  connection-table hit -> rewrite to the recorded backend;
  miss -> service table (VIP, protocol, port) -> Maglev -> record the flow -> rewrite;
  no such service port, or no endpoints -> REJECT (the kernel answers with a TCP RST or
  ICMP port unreachable, as kube-proxy does); no endpoints on this node under
  internalTrafficPolicy Local while other nodes have some -> DROP, as kube-proxy does.
Reply (queued because its conntrack entry carries the proxied mark):
  hit -> rewrite the source back to VIP:port;
  miss (the proxy restarted) -> recover the VIP from the endpoint index if only one
  service port uses that backend, else drop.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

from nfqproxy import defaults
from nfqproxy.datapath.decisions import (
    PortCounts,
    TraceEvent,
    TraceRing,
    retired_names,
    tuple_is_read,
)
from nfqproxy.datapath.flows import (
    IPPROTO_TCP,
    FlowRecord,
    FlowState,
    Timeouts,
    affinity_capacity,
    initial_state,
    is_connection_request,
)
from nfqproxy.datapath.frontends import (
    PROTOCOL_MASK,
    Frontend,
    PortChanges,
    TableKey,
    plan_changes,
    primary_key,
    routing,
    snapshot_changes,
    update_ports,
    variant_key,
)
from nfqproxy.datapath.hashing import flow_hash
from nfqproxy.datapath.reference.conntable import (
    Affinity,
    AffinityTable,
    ConnectionTable,
    Flow,
)
from nfqproxy.datapath.reference.icmp import IcmpError, translate_icmp_error
from nfqproxy.datapath.reference.packet import (
    ParsedPacket,
    parse,
    rewrite_destination,
    rewrite_source,
)
from nfqproxy.datapath.verdicts import Action, Verdict, verdict_counter
from nfqproxy.model import IPNetwork, ServicePort, ServicePortKey, Snapshot


class ReferenceDatapath:
    def __init__(
        self,
        service_cidrs: Iterable[IPNetwork],
        capacity: int = defaults.FLOW_CAPACITY,
        timeouts: Timeouts | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # (address length, network, mask), to test a packed address of either family.
        self.service_ranges = [
            (cidr.max_prefixlen // 8, int(cidr.network_address), int(cidr.netmask))
            for cidr in service_cidrs
        ]
        self.flows = ConnectionTable(capacity, timeouts)
        self.affinity = AffinityTable(affinity_capacity(capacity))
        self.seed = seed
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.trace = TraceRing()
        self.port_counts = PortCounts()
        self._ports: dict[ServicePortKey, ServicePort] = {}  # as programmed
        self._frontends: dict[TableKey, Frontend] = {}
        self._vips: Counter[bytes] = Counter()  # VIP -> service ports it serves
        # (protocol, backend address, backend port) -> frontends using it, for reply recovery
        self._by_backend: dict[tuple[int, bytes, int], list[TableKey]] = {}

    # --- programming ------------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> list[str]:
        """Programs the tables to hold exactly the snapshot; see apply_changes."""
        return self.apply_changes(snapshot_changes(self._ports, snapshot))

    def apply_changes(self, changes: PortChanges) -> list[str]:
        """Adds, replaces (a ServicePort) or removes (None) frontends, all or nothing.

        Returns the names of the service ports added, changed or removed.
        """
        plan = plan_changes(self._ports, changes, self.seed)
        retired = retired_names(self._frontends, plan.removed, plan.built)
        for key in plan.removed:
            self._unindex(key)
        for key, frontend in plan.built.items():
            self._unindex(key)
            self._frontends[key] = frontend
            self._vips[key[0]] += 1
            for address, port_number in frontend.backends:
                self._by_backend.setdefault(
                    (key[1] & PROTOCOL_MASK, address, port_number), []
                ).append(primary_key(key))
        update_ports(self._ports, changes)
        self.port_counts.retire(retired, self._frontends)
        if plan.backends_lost:
            self._retire_flows_to_removed_backends()
        return plan.names

    def frontend(self, key: TableKey) -> Frontend | None:
        return self._frontends.get(key)

    def _unindex(self, key: TableKey) -> None:
        """Removes a frontend and its entries in the VIP and backend indexes."""
        frontend = self._frontends.pop(key, None)
        if frontend is None:
            return
        self._vips[key[0]] -= 1
        if not self._vips[key[0]]:
            del self._vips[key[0]]
        for address, port_number in frontend.backends:
            index = (key[1] & PROTOCOL_MASK, address, port_number)
            users = self._by_backend[index]
            users.remove(primary_key(key))
            if not users:
                del self._by_backend[index]

    def _retire_flows_to_removed_backends(self) -> None:
        """UDP flows whose backend is no longer chosen move on with their next datagram,
        as kube-proxy clears conntrack for them. TCP flows whose backend left the service
        altogether are marked, and the client's next packet gets a reset; TCP flows to a
        draining (terminating) backend are left to finish."""
        now = self.clock()
        for flow in self.flows.flows():
            key = (flow.vip, flow.proto, flow.vport)
            tables = [
                f for f in (self._frontends.get(key), self._frontends.get(variant_key(key))) if f
            ]
            backend = (flow.backend_ip, flow.backend_port)
            if flow.proto != IPPROTO_TCP:
                if not any(backend in f.backends for f in tables):
                    self.flows.remove(flow)
                    self.counters["udp_flow_resteered"] += 1
            elif flow.state is not FlowState.TCP_BACKEND_GONE and not any(
                f.serves(backend) for f in tables
            ):
                self.flows.retire(flow, now)
                self.counters["tcp_flow_retired"] += 1

    # --- packets ----------------------------------------------------------------------

    def _in_service_range(self, address: bytes) -> bool:
        value = int.from_bytes(address, "big")
        return any(
            len(address) == size and value & mask == network
            for size, network, mask in self.service_ranges
        )

    def _is_request(self, packet: ParsedPacket) -> bool:
        """To a service: a ClusterIP (the whole range), or an external frontend. The hooks
        queue only the frontends' own ports outside the range, so any other packet is a
        reply of a proxied flow."""
        return (
            self._in_service_range(packet.dst)
            or (packet.dst, packet.proto, packet.dport) in self._frontends
        )

    def process(self, raw: bytes, source: int = 0) -> Verdict:
        """The verdict for one queued packet; source: the SOURCE_* bits of its mark
        (datapath/marks.py). Never raises."""
        packet = None
        try:
            parsed = parse(raw)
            if isinstance(parsed, str):
                verdict = Verdict(Action.DROP, parsed)
            elif isinstance(parsed, IcmpError):
                verdict = self._icmp_error(parsed)
            else:
                packet = parsed
                if parsed.has_ip_options:
                    self.counters["ip_options"] += 1
                if self._is_request(parsed):
                    verdict = self._request(parsed, source)
                else:
                    verdict = self._reply(parsed)
        except Exception:  # the proxy must outlive any packet; the counter shows the bug
            verdict = Verdict(Action.DROP, "internal_error")
        self.counters[verdict_counter(verdict.action, verdict.reason)] += 1
        if self.trace.on and verdict.action is not Action.ACCEPT:
            self._trace_refusal(verdict, packet)
        return verdict

    def _trace_refusal(self, verdict: Verdict, packet: ParsedPacket | None) -> None:
        action, reason, now = verdict.action.value, verdict.reason, self.clock()
        if packet is None or not tuple_is_read(reason):
            event = TraceEvent(now, action, reason, 0, None, 0, None, 0, None, 0)
        else:
            event = TraceEvent(now, action, reason, packet.proto, packet.src, packet.sport,
                               packet.dst, packet.dport, None, 0)  # fmt: skip
        self.trace.record(event)

    def _request(self, packet: ParsedPacket, source: int) -> Verdict:
        now = self.clock()
        masquerade = False
        key = (packet.proto, packet.src, packet.sport, packet.dst, packet.dport)
        flow = self.flows.lookup_forward(key, now)
        reason = "request"
        if flow is not None and flow.state is FlowState.TCP_BACKEND_GONE:
            self.flows.remove(flow)
            if not is_connection_request(packet.proto, packet.tcp_flags):
                key_removed = (packet.dst, packet.proto, packet.dport)
                if key_removed in self._frontends:
                    self.port_counts.add(key_removed, "backend_removed")
                return Verdict(Action.REJECT, "backend_removed")
            # A SYN starts a new connection (a reused port, or a SYN sent again after its
            # backend left): it gets a new backend, not a reset.
            flow = None
        if flow is None:
            frontend_key = (packet.dst, packet.proto, packet.dport)
            frontend = self._frontends.get(frontend_key)
            if frontend is None:
                unknown = "no_service" if packet.dst not in self._vips else "port_not_served"
                return Verdict(Action.REJECT, unknown)
            use_variant, masquerade = routing(frontend.policy, source)
            if use_variant:
                frontend_key = variant_key(frontend_key)
                frontend = self._frontends[frontend_key]
            if not frontend.backends:
                if frontend.no_local_endpoints:  # as kube-proxy: the client times out
                    self.port_counts.add(frontend_key, "no_local_endpoints")
                    return Verdict(Action.DROP, "no_local_endpoints")
                self.port_counts.add(frontend_key, "no_endpoints")
                return Verdict(Action.REJECT, "no_endpoints")
            backend_ip, backend_port = self._choose(frontend, packet, now)
            self.port_counts.add(frontend_key, "new_flow")
            if self.trace.on:
                self.trace.record(TraceEvent(now, "accept", "new_flow", packet.proto, packet.src,
                    packet.sport, packet.dst, packet.dport, backend_ip, backend_port))  # fmt: skip
            flow = Flow(
                packet.proto,
                packet.src,
                packet.sport,
                packet.dst,
                packet.dport,
                backend_ip,
                backend_port,
                frontend.name,
                initial_state(packet.proto, packet.tcp_flags),
                masquerade=masquerade,
            )
            self.flows.add(flow, now)
            reason = "new_flow"
        else:
            self.flows.observe(flow, True, packet.tcp_flags, now)
        payload = rewrite_destination(packet, flow.backend_ip, flow.backend_port)
        # The nat table decides on a connection's first packet, which need not be the
        # flow's: a client that reuses a 5-tuple still in the table starts a new conntrack
        # entry on a known flow. So every request carries the flow's masquerade.
        masquerade = flow.masquerade or flow.backend_ip == flow.client_ip
        return Verdict(Action.ACCEPT, reason, payload, proxied=True, masquerade=masquerade)

    def _choose(self, frontend: Frontend, packet: ParsedPacket, now: float) -> tuple[bytes, int]:
        """The backend for a new flow: the client's sticky one, else Maglev's."""
        sticky = None
        if frontend.affinity_seconds:
            key = (packet.proto, packet.src, packet.dst, packet.dport)
            sticky = self.affinity.lookup(key, now)
            if sticky is not None and (sticky.backend_ip, sticky.backend_port) in frontend.backends:
                sticky.expires = now + frontend.affinity_seconds
                self.counters["affinity_hit"] += 1
                return sticky.backend_ip, sticky.backend_port
        index = frontend.selector.select(
            flow_hash(packet.proto, packet.src, packet.sport, packet.dst, packet.dport, self.seed)
        )
        backend = frontend.backends[index]
        if frontend.affinity_seconds:
            expires = now + frontend.affinity_seconds
            if sticky is not None:  # its backend left the service: the client moves on
                sticky.backend_ip, sticky.backend_port, sticky.expires = *backend, expires
            elif not self.affinity.add(key, Affinity(*backend, expires)):
                self.counters["affinity_table_full"] += 1
        return backend

    def _icmp_error(self, error: IcmpError) -> Verdict:
        """An ICMP error about a proxied flow (a port unreachable from a backend, a
        fragmentation needed from the node on the way to it), translated so that the
        client's kernel matches it to its socket: PMTU discovery and refused ports then
        work through the VIP. Errors about other traffic are not ours to pass."""
        if self._in_service_range(error.outer_dst):
            return Verdict(Action.DROP, "icmp_unknown_flow")
        key = (
            error.inner_proto,
            error.inner_dst,
            error.inner_dport,
            error.inner_src,
            error.inner_sport,
        )
        flow = self.flows.lookup_reply(key, self.clock())
        if flow is None:
            return Verdict(Action.DROP, "icmp_unknown_flow")
        payload = translate_icmp_error(error, flow.vip, flow.vport, flow.backend_ip)
        return Verdict(Action.ACCEPT, "icmp_error", payload)

    def _reply(self, packet: ParsedPacket) -> Verdict:
        now = self.clock()
        key = (packet.proto, packet.src, packet.sport, packet.dst, packet.dport)
        flow = self.flows.lookup_reply(key, now)
        reason = "reply"
        if flow is None:
            flow = self._recover_flow(packet)
            if flow is None:
                return Verdict(Action.DROP, "unknown_reply")
            self.flows.add(flow, now)
            reason = "reply_recovered"
        self.flows.observe(flow, False, packet.tcp_flags, now)
        return Verdict(Action.ACCEPT, reason, rewrite_source(packet, flow.vip, flow.vport))

    def _recover_flow(self, packet: ParsedPacket) -> Flow | None:
        # A frontend and its cluster variant are one service port: counted once.
        candidates = set(self._by_backend.get((packet.proto, packet.src, packet.sport), []))
        if len(candidates) != 1:
            return None
        (key,) = candidates
        vip, proto, vport = key
        state = FlowState.TCP_ESTABLISHED if proto == IPPROTO_TCP else FlowState.UDP_REPLIED
        return Flow(
            proto,
            packet.dst,
            packet.dport,
            vip,
            vport,
            packet.src,
            packet.sport,
            self._frontends[key].name,
            state,
        )

    def affinity_entry(
        self, proto: int, client: bytes, vip: bytes, vport: int
    ) -> tuple[bytes, int, float] | None:
        now = self.clock()
        entry = self.affinity.peek((proto, client, vip, vport), now)
        return (
            None if entry is None else (entry.backend_ip, entry.backend_port, entry.expires - now)
        )

    def flow_table(self) -> dict[str, object]:
        table = self.flows
        return {"capacity": table.capacity, "evicted": table.evicted, "expired": table.expired}

    def service_port_counts(self) -> dict[str, dict[str, int]]:
        return self.port_counts.by_service_port(self._frontends)

    def trace_start(self, size: int) -> None:
        self.trace.start(size)

    def trace_stop(self) -> None:
        self.trace.stop()

    def trace_take(self) -> tuple[list[TraceEvent], int]:
        return self.trace.take()

    def flow_records(self, limit: int) -> tuple[list[FlowRecord], int]:
        now = self.clock()
        flows = self.flows.flows()
        records = [
            FlowRecord.of(f, f.service, f.state.value, f.expires - now, now - f.created)
            for f in flows[:limit]
        ]
        return records, len(flows)

    def expire(self) -> int:
        """Drops expired flows (returned: how many) and expired client affinities."""
        now = self.clock()
        self.affinity.expire(now)
        return self.flows.expire(now)

    def status(self) -> dict[str, object]:
        return {
            "service_ports": len(self._frontends),
            "connection_table": self.flows.summary(),
            "session_affinity": {"clients": len(self.affinity), "capacity": self.affinity.capacity},
            "counters": dict(sorted(self.counters.items())),
        }
