# Included by fastpath.pyx, after every other part of the core. One packet's verdict: the
# reference's process() (nfqproxy.datapath.reference.datapath), with the same reasons in the
# same order of checks. The packet is rewritten in place; nothing here takes the GIL.

cdef inline bint is_request(ServiceTable *s, Headers *h) noexcept nogil:
    """To a service: a ClusterIP (the whole range), or an external frontend. The hooks queue
    only the frontends' own ports outside the range, so any other packet is a reply."""
    return in_service_ranges(s, h.dst) or frontend_find(s, h.dst, h.proto, h.dport) != NULL


cdef inline void count_backend_removed(Core *c, Headers *h) noexcept nogil:
    """A reset for a flow whose backend left, counted on its service port (a rare path:
    the lookup is paid only here)."""
    cdef Frontend *f = frontend_find(&c.services, h.dst, h.proto, h.dport)
    if f != NULL:
        f.refused[REFUSE_BACKEND_REMOVED] += 1


cdef Frontend *frontend_for_new_flow(Core *c, Headers *h, Verdict *v, int source) noexcept nogil:
    """The frontend a new flow to h's destination from a source with these SOURCE_* bits
    goes to, its verdict's masquerade set by the frontend's policy (the reference's
    routing()); NULL, with the verdict set to a reject or a drop, when no backend can take
    it."""
    cdef Frontend *f = frontend_find(&c.services, h.dst, h.proto, h.dport)
    cdef bint masquerade = False
    v.masquerade = 0
    if f == NULL:
        v.action = ACT_REJECT
        v.reason = R_PORT_NOT_SERVED if map_slot(&c.services.vip_map, h.dst, 0, False) != NULL else R_NO_SERVICE
        return NULL
    if f.policy == POLICY_EXTERNAL_CLUSTER:
        masquerade = True
    elif f.policy == POLICY_EXTERNAL_LOCAL:
        if source & (SOURCE_POD | SOURCE_NODE):
            # The cluster's own pods and the node take every endpoint of the cluster; the
            # node's traffic is masqueraded (kube-proxy's EXT chain, nfqproxy.external).
            masquerade = not (source & SOURCE_POD)
            f = frontend_find(&c.services, h.dst, h.proto | VARIANT_CLUSTER, h.dport)
            if f == NULL:  # programmed with its primary, always; a bug if not
                v.action, v.reason = ACT_DROP, R_INTERNAL_ERROR
                return NULL
    elif source & SOURCE_OFF_CLUSTER:
        masquerade = True
    if f.backend_count == 0:
        if f.drop_when_empty:
            v.action, v.reason = ACT_DROP, R_NO_LOCAL_ENDPOINTS
            f.refused[REFUSE_NO_LOCAL_ENDPOINTS] += 1
        else:
            v.action, v.reason = ACT_REJECT, R_NO_ENDPOINTS
            f.refused[REFUSE_NO_ENDPOINTS] += 1
        return NULL
    v.masquerade = masquerade  # for a flow that goes ahead only, as the reference
    return f


cdef void decide_request(Core *c, uint8_t *pkt, Headers *h, double now, bint partial,
                         int source, Verdict *v) noexcept nogil:
    """A packet to a service address: a known flow's, or a new flow's, DNATed."""
    cdef FlowTable *t = &c.flows
    cdef uint32_t index = flow_live(t, flow_find(t, False, h.proto, h.src, h.sport, h.dst, h.dport,
                                                 h.version), now)
    cdef Frontend *f
    cdef FlowSpec flow
    cdef Addr backend
    v.reason = R_REQUEST
    v.masquerade = 0
    if index != NIL and t.entries[index].state == S_BACKEND_GONE:
        flow_remove(t, index)
        index = NIL
        if not (h.flags & TCP_SYN and not h.flags & TCP_ACK):
            v.action, v.reason = ACT_REJECT, R_BACKEND_REMOVED
            count_backend_removed(c, h)
            return
        # A SYN starts a new connection (a reused port, or a SYN sent again after
        # its backend left): it gets a new backend, not a reset.
    if index == NIL:
        f = frontend_for_new_flow(c, h, v, source)
        if f == NULL:
            return
        flow.proto, flow.client_ip, flow.client_port = h.proto, h.src, h.sport
        flow.vip, flow.vport, flow.version = h.dst, h.dport, h.version
        f.decided[choose_backend(c, f, &flow, now)] += 1
        if tracing(c):
            trace_new_flow(c, h, &flow, now)
        flow.state = initial_state(h.proto, h.flags)
        flow.masquerade = v.masquerade
        index = flow_add(t, &flow, now)
        v.reason = R_NEW_FLOW
    else:
        flow_observe(t, index, True, h.flags, now)
    backend = flow_backend(t, index)
    rewrite(pkt, h, &backend, t.entries[index].backend_port, True, partial)
    v.action, v.proxied = ACT_ACCEPT, 1
    # The nat table decides on a connection's first packet, which need not be the flow's:
    # a client that reuses a 5-tuple still in the table starts a new conntrack entry on a
    # known flow. So every request carries the flow's masquerade, as it was decided.
    v.masquerade = (t.entries[index].bits & FLOW_MASQUERADE
                    or t.entries[index].backend_ip == t.entries[index].client_ip
                    and addr_eq(backend, flow_client(t, index)))


cdef void decide_reply(Core *c, uint8_t *pkt, Headers *h, double now, bint partial,
                       Verdict *v) noexcept nogil:
    """Any other packet is a reply of a proxied connection (the hooks queue no others):
    un-NATed, its flow rebuilt from the backend when the table lost it (after a restart)."""
    cdef FlowTable *t = &c.flows
    cdef uint32_t index = flow_live(t, flow_find(t, True, h.proto, h.src, h.sport, h.dst, h.dport,
                                                 h.version), now)
    cdef Frontend *f
    cdef FlowSpec flow
    cdef Addr vip
    v.reason = R_REPLY
    if index == NIL:
        f = frontend_of_backend(&c.services, h.proto, h.src, h.sport)
        if f == NULL:
            v.reason = R_UNKNOWN_REPLY
            return
        flow.proto, flow.client_ip, flow.client_port = h.proto, h.dst, h.dport
        flow.vip, flow.vport = f.vip, f.port
        flow.backend_ip, flow.backend_port, flow.version = h.src, h.sport, h.version
        flow.state = S_ESTABLISHED if h.proto == PROTO_TCP else S_UDP_REPLIED
        flow.masquerade = 0  # its conntrack entry, which holds the NAT, lives on
        index = flow_add(t, &flow, now)
        v.reason = R_REPLY_RECOVERED
    flow_observe(t, index, False, h.flags, now)
    vip = flow_vip(t, index)
    rewrite(pkt, h, &vip, t.entries[index].vport, False, partial)
    v.action = ACT_ACCEPT


cdef inline bint has_options(Headers *h) noexcept nogil:
    """IPv4 options, or IPv6 extension headers: counted as ip_options."""
    return h.hl > 20 if h.version == 4 else h.extensions > 0


cdef inline bint parse_packet(Core *c, uint8_t *pkt, uint32_t length, double now,
                              Headers *h, Verdict *v, bint icmp) noexcept nogil:
    """reference packet.parse, both families: True for a TCP, UDP or SCTP packet with h
    filled; False with the verdict's reason set otherwise, or with an ICMP error about a
    proxied flow translated (only if icmp: the offload path gets none)."""
    if not parse_ip(pkt, length, h, v):
        return False
    if h.later_fragment:
        # The kernel reassembles IPv6 before the raw table when conntrack is loaded (it is
        # with our hooks): a later fragment has no ports. Counted, dropped.
        v.reason = R_FRAGMENT
        return False
    if h.proto == (PROTO_ICMP if h.version == 4 else PROTO_ICMPV6):
        if not icmp:
            # ICMP errors about a flow are RELATED, not NEW, and conntrack translates
            # them; what comes here (an echo request to a VIP, say) is no service's.
            v.reason = R_UNSUPPORTED
        else:
            icmp_error(c, pkt, h, now, v)
        return False
    if h.proto != PROTO_TCP and h.proto != PROTO_UDP and h.proto != PROTO_SCTP:
        v.reason = R_UNSUPPORTED
        return False
    return parse_ports(pkt, h, v)


cdef inline void decide(Core *c, uint8_t *pkt, uint32_t length, double now, bint partial,
                        int source, Headers *h, Verdict *v) noexcept nogil:
    if not parse_packet(c, pkt, length, now, h, v, True):
        return
    if has_options(h):
        c.events[E_IP_OPTIONS] += 1
    if is_request(&c.services, h):
        decide_request(c, pkt, h, now, partial, source, v)
    else:
        decide_reply(c, pkt, h, now, partial, v)


cdef Verdict process_packet(Core *c, uint8_t *pkt, uint32_t length, double now,
                            bint partial, int source) noexcept nogil:
    """The verdict for one packet, counted; rewrites it in place. The reference's process().

    partial: the packet's L4 checksum field holds only the pseudo-header sum, as the kernel
    reports with NFQA_SKB_CSUMNOTREADY. source: the SOURCE_* bits of its mark.
    """
    cdef Verdict v
    cdef Headers h
    v.action, v.reason, v.proxied, v.masquerade, v.length, v.mark = ACT_DROP, R_TRUNCATED_IP, 0, 0, length, 0
    decide(c, pkt, length, now, partial, source, &h, &v)
    c.verdicts[v.action][v.reason] += 1
    if v.action != ACT_ACCEPT and tracing(c):  # an accepted packet does not even load it
        trace_refusal(c, &h, &v, now)
    return v


cdef void decide_first(Core *c, uint8_t *pkt, uint32_t length, double now, int source,
                       Headers *h, Verdict *v) noexcept nogil:
    """The offload path: the first packet of a flow (conntrack calls it NEW), decided by the
    same rules, but not rewritten: the verdict's mark names the backend, and the kernel's
    DNAT map and conntrack do the rest. No flow is recorded here: conntrack holds them."""
    cdef Frontend *f
    cdef FlowSpec flow
    cdef uint32_t chosen
    if not parse_packet(c, pkt, length, now, h, v, False):
        return
    if has_options(h):
        c.events[E_IP_OPTIONS] += 1
    v.reason = R_UNKNOWN_REPLY
    if not is_request(&c.services, h):
        return  # the hooks queue only the frontends; as the fast path, drop the unplaceable
    if h.proto == PROTO_TCP and not (h.flags & TCP_SYN and not h.flags & TCP_ACK):
        # Conntrack no longer knows this connection: its backend was removed (its entries
        # were deleted) or the entry expired. No backend has it any more: reset the client,
        # as the fast path does for a flow whose backend left.
        v.action, v.reason = ACT_REJECT, R_BACKEND_REMOVED
        count_backend_removed(c, h)
        return
    f = frontend_for_new_flow(c, h, v, source)
    if f == NULL:
        return
    flow.proto, flow.client_ip, flow.client_port = h.proto, h.src, h.sport
    flow.vip, flow.vport, flow.version = h.dst, h.dport, h.version
    chosen = choose_backend(c, f, &flow, now)
    f.decided[chosen] += 1
    if tracing(c):
        trace_new_flow(c, h, &flow, now)
    v.action, v.reason, v.proxied = ACT_ACCEPT, R_NEW_FLOW, 1
    v.mark = f.backend_marks[chosen]
    v.masquerade = v.masquerade or addr_eq(flow.backend_ip, flow.client_ip)


cdef Verdict process_first_packet(Core *c, uint8_t *pkt, uint32_t length,
                                  double now, int source) noexcept nogil:
    """decide_first's verdict, counted."""
    cdef Verdict v
    cdef Headers h
    v.action, v.reason, v.proxied, v.masquerade, v.length, v.mark = ACT_DROP, R_TRUNCATED_IP, 0, 0, length, 0
    decide_first(c, pkt, length, now, source, &h, &v)
    c.verdicts[v.action][v.reason] += 1
    if v.action != ACT_ACCEPT and tracing(c):
        trace_refusal(c, &h, &v, now)
    return v
