# Included by fastpath.pyx, after core.pxi. The queue loop: NFQUEUE over raw netlink
# (includes/netlink.pxd), batched both ways, without the GIL. It runs in a worker thread of
# its own (run()), or from the event loop (drain()). Two modes: the fast path's (every packet
# of a flow, rewritten) and the offload path's (a flow's first packet, answered with a mark).

cdef enum:
    BATCH = 32                      # messages per recvmmsg
    WAKE_MS = 100                   # how soon a worker notices stop()
    DRAIN_BATCHES = 16              # batches per event-loop wake-up: about 2 ms of packets
    RX_SLOT = 69632                 # one GSO packet (up to 64 KiB) plus netlink framing
    TX_BUFFER = 4 * 1024 * 1024     # verdicts of a batch, payloads included, in one sendmsg
    SOCKET_BUFFER = 16 * 1024 * 1024


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # the clock of Python's time.monotonic()
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class FastQueue:
    """Binds one NFQUEUE queue with NFQA_CFG_F_GSO and gives FastCore's verdicts in batches."""

    cdef int fd
    cdef readonly uint32_t queue_num
    cdef uint32_t max_len
    cdef uint32_t mark_mask, mark_proxied, mark_reject, mark_masquerade
    cdef uint32_t mark_source_pod, mark_source_off_cluster, mark_source_node
    cdef bint fail_open, offload
    cdef int stopping
    cdef FastCore core
    cdef char *rx
    cdef char *tx
    cdef size_t tx_length
    cdef mmsghdr messages[BATCH]
    cdef iovec vectors[BATCH]
    cdef uint64_t counts[Q_COUNT]  # by Q_*, named by QUEUE_STAT_NAMES

    def __cinit__(self, FastCore core, uint32_t queue_num, uint32_t max_len, uint32_t mark_mask,
                  uint32_t mark_proxied, uint32_t mark_reject, uint32_t mark_masquerade,
                  bint fail_open=False, bint offload=False, tuple source_marks=(0, 0, 0)):
        """The marks are bits inside mark_mask; a verdict never touches a bit outside it.
        offload: answer first packets with the chosen backend's mark instead of rewriting.
        source_marks: the bits the hooks set on a source in the cluster, one outside it,
        and one from this node (MarkLayout.source_pod, source_off_cluster, source_node)."""
        self.fd = -1
        self.fail_open, self.offload = fail_open, offload
        self.core = core
        self.queue_num, self.max_len = queue_num, max_len
        self.mark_mask = mark_mask
        self.mark_proxied, self.mark_reject, self.mark_masquerade = mark_proxied, mark_reject, mark_masquerade
        self.mark_source_pod, self.mark_source_off_cluster, self.mark_source_node = source_marks
        self.rx = <char *> malloc(BATCH * RX_SLOT)
        self.tx = <char *> malloc(TX_BUFFER)
        if self.rx == NULL or self.tx == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        free(self.rx)
        free(self.tx)

    @property
    def fileno(self):
        return self.fd

    def stats(self):
        return {name: self.counts[i] for i, name in enumerate(QUEUE_STAT_NAMES)}

    def open(self):
        cdef sockaddr_nl address
        cdef int size = SOCKET_BUFFER
        cdef char buf[512]
        cdef nlmsghdr *nlh
        # FAIL_OPEN: a full queue accepts packets unseen instead of dropping them
        # (docs/design.md weighs this; off unless asked for).
        cdef uint32_t flags = NFQA_CFG_F_GSO | (NFQA_CFG_F_FAIL_OPEN if self.fail_open else 0)
        memset(&address, 0, sizeof(address))
        address.nl_family = AF_NETLINK
        self.fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_NETFILTER)
        if self.fd < 0 or bind(self.fd, <sockaddr *> &address, sizeof(address)) < 0:
            raise OSError(errno, f"cannot open a netfilter netlink socket: {strerror(errno).decode()}")
        # Forced sizes need CAP_NET_ADMIN, which binding a queue needs anyway.
        setsockopt(self.fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size))
        setsockopt(self.fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size))
        try:
            nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, self.queue_num)
            nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND)
            self._blocking_request(nlh)
            nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, self.queue_num)
            nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xFFFF)
            nfq_nlmsg_cfg_put_qmaxlen(nlh, self.max_len)
            # F_GSO: the kernel hands over GSO packets whole instead of segmenting them
            # first; the single biggest cost of NFQUEUE (about 10x here).
            mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags))
            mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN))
            self._blocking_request(nlh)
        except OSError as exc:
            close(self.fd)
            self.fd = -1
            raise OSError(exc.errno, f"cannot bind NFQUEUE {self.queue_num}: {exc.strerror} "
                          "(is another process bound to it? Does this process have CAP_NET_ADMIN?)")

    cdef _blocking_request(self, nlmsghdr *nlh):
        # The socket is non-blocking for the packet loop; acknowledgements come at once,
        # but wait for them politely.
        import select
        nlh.nlmsg_flags |= NLM_F_ACK
        if send(self.fd, nlh, nlh.nlmsg_len, 0) < 0:
            raise OSError(errno, strerror(errno).decode())
        cdef char answer[8192]
        cdef ssize_t got
        cdef nlmsgerr *error
        while True:
            readable, _, _ = select.select([self.fd], [], [], 5.0)
            if not readable:
                raise OSError(110, "no acknowledgement from the kernel within 5 s")  # ETIMEDOUT
            got = recv(self.fd, answer, sizeof(answer), MSG_DONTWAIT)
            if got < 0:
                if errno == EINTR or errno == EAGAIN:
                    continue
                raise OSError(errno, strerror(errno).decode())
            if (<nlmsghdr *> answer).nlmsg_type == NLMSG_ERROR:
                error = <nlmsgerr *> mnl_nlmsg_get_payload(<nlmsghdr *> answer)
                if error.error != 0:
                    raise OSError(-error.error, strerror(-error.error).decode())
                return

    def close(self):
        cdef char buf[512]
        cdef nlmsghdr *nlh
        if self.fd < 0:
            return
        nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, self.queue_num)
        nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_UNBIND)
        send(self.fd, nlh, nlh.nlmsg_len, 0)
        close(self.fd)  # closing the socket unbinds in any case
        self.fd = -1

    def run(self):
        """The worker thread's loop: waits for packets and decides them, without the GIL,
        until stop(). Python is never on the packet path.

        It sleeps in recvmmsg itself (MSG_WAITFORONE: block for the first message, then
        take what else is there), with a receive timeout of WAKE_MS to notice stop(): one
        system call per wake-up besides the verdicts' send, where poll, a read and a read
        that finds the socket empty took three. Each SYN of the offload path is a wake-up
        of its own on a quiet node."""
        cdef timeval wake
        if self.fd < 0:
            return
        wake.tv_sec, wake.tv_usec = WAKE_MS // 1000, (WAKE_MS % 1000) * 1000
        if setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &wake, sizeof(wake)) < 0:
            raise OSError(errno, f"cannot set the queue's receive timeout: {strerror(errno).decode()}")
        # drain() passes MSG_DONTWAIT itself; this loop waits in the kernel.
        fcntl(self.fd, F_SETFL, fcntl(self.fd, F_GETFL) & ~O_NONBLOCK)
        with nogil:
            while not self.stopping:
                self._batch(MSG_WAITFORONE)  # returns at once while messages wait

    def stop(self):
        """Asks run() to return, within WAKE_MS."""
        self.stopping = 1

    def drain(self):
        """Handles the packets waiting, in batches, without the GIL. Returns how many.

        At most DRAIN_BATCHES batches per call: under a packet flood the socket never runs
        dry, and the event loop must still get its turn for syncs, health and status. The
        socket stays readable, so the loop calls again at once."""
        cdef int got, batches = 0
        cdef uint64_t before = self.counts[Q_PACKETS]
        if self.fd < 0:
            return 0
        with nogil:
            while batches < DRAIN_BATCHES:
                got = self._batch(MSG_DONTWAIT)
                if got <= 0:
                    break
                batches += 1
        return self.counts[Q_PACKETS] - before

    cdef void _flush(self) noexcept nogil:
        if self.tx_length and send(self.fd, self.tx, self.tx_length, 0) < 0:
            self.counts[Q_SEND_ERROR] += 1
        self.tx_length = 0

    cdef int _batch(self, int flags) noexcept nogil:
        """Reads up to BATCH messages and answers them. Returns how many were read; 0 when
        there were none (the socket empty, or the wait timed out); 1 after an error that
        reading again can get past (an overrun, a signal)."""
        cdef int i, got, remaining
        cdef nlmsghdr *nlh
        cdef double now
        for i in range(BATCH):
            self.vectors[i].iov_base = self.rx + i * RX_SLOT
            self.vectors[i].iov_len = RX_SLOT
            memset(&self.messages[i].msg_hdr, 0, sizeof(msghdr))
            self.messages[i].msg_hdr.msg_iov = &self.vectors[i]
            self.messages[i].msg_hdr.msg_iovlen = 1
        got = recvmmsg(self.fd, self.messages, BATCH, flags, NULL)
        if got < 0:
            if errno == ENOBUFS:  # the kernel dropped messages for us: count, carry on
                self.counts[Q_SOCKET_OVERRUN] += 1
                return 1
            return 1 if errno == EINTR else 0
        self.counts[Q_BATCHES] += 1
        now = monotonic()
        pthread_mutex_lock(&self.core.c.lock)  # the tables, against a sync from Python
        for i in range(got):
            nlh = <nlmsghdr *> (self.rx + i * RX_SLOT)
            remaining = self.messages[i].msg_len
            while mnl_nlmsg_ok(nlh, remaining):
                self._packet(nlh, now)
                if self.tx_length > TX_BUFFER - RX_SLOT - 1024:
                    self._flush()
                nlh = mnl_nlmsg_next(nlh, &remaining)
        pthread_mutex_unlock(&self.core.c.lock)
        self._flush()
        return got

    cdef void _packet(self, nlmsghdr *nlh, double now) noexcept nogil:
        cdef nlattr *attrs[NFQA_MAX + 1]
        cdef nfqnl_msg_packet_hdr *header
        cdef uint32_t packet_id, mark = 0, length
        cdef uint8_t *data
        cdef bint partial = False
        cdef int source
        cdef Verdict v
        cdef nlmsghdr *out
        if nlh.nlmsg_type == NLMSG_ERROR:
            # The kernel refused a verdict (an unknown id, a malformed message): count it.
            if (<nlmsgerr *> mnl_nlmsg_get_payload(nlh)).error != 0:
                self.counts[Q_VERDICT_REFUSED] += 1
                self.counts[Q_LAST_REFUSAL_ERRNO] = -(<nlmsgerr *> mnl_nlmsg_get_payload(nlh)).error
            return
        if nlh.nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | 0):  # NFQNL_MSG_PACKET
            return
        memset(attrs, 0, sizeof(attrs))
        if nfq_nlmsg_parse(nlh, attrs) < 0 or attrs[NFQA_PACKET_HDR] == NULL:
            self.counts[Q_BAD_MESSAGE] += 1  # without an id there is no verdict to give
            return
        header = <nfqnl_msg_packet_hdr *> mnl_attr_get_payload(attrs[NFQA_PACKET_HDR])
        packet_id = ntohl(header.packet_id)
        if attrs[NFQA_MARK] != NULL:
            mark = ntohl(mnl_attr_get_u32(attrs[NFQA_MARK]))
        out = nfq_nlmsg_put(self.tx + self.tx_length, NFQNL_MSG_VERDICT, self.queue_num)
        self.counts[Q_PACKETS] += 1
        if attrs[NFQA_PAYLOAD] == NULL:
            self.counts[Q_NO_PAYLOAD] += 1
            nfq_nlmsg_verdict_put(out, packet_id, NF_DROP)
            self.tx_length += out.nlmsg_len
            return
        if attrs[NFQA_SKB_INFO] != NULL and ntohl(mnl_attr_get_u32(attrs[NFQA_SKB_INFO])) & NFQA_SKB_CSUMNOTREADY:
            partial = True
            self.counts[Q_PARTIAL_CHECKSUM] += 1
        data = <uint8_t *> mnl_attr_get_payload(attrs[NFQA_PAYLOAD])
        length = mnl_attr_get_payload_len(attrs[NFQA_PAYLOAD])
        source = ((SOURCE_POD if mark & self.mark_source_pod else 0)
                  | (SOURCE_OFF_CLUSTER if mark & self.mark_source_off_cluster else 0)
                  | (SOURCE_NODE if mark & self.mark_source_node else 0))
        if self.offload:
            v = process_first_packet(&self.core.c, data, length, now, source)
        else:
            v = process_packet(&self.core.c, data, length, now, partial, source)
        mark &= ~self.mark_mask  # others' bits stay as they came; ours are set anew
        if v.action == ACT_DROP:
            nfq_nlmsg_verdict_put(out, packet_id, NF_DROP)
        elif v.action == ACT_REJECT:
            nfq_nlmsg_verdict_put(out, packet_id, NF_ACCEPT)
            nfq_nlmsg_verdict_put_mark(out, mark | self.mark_reject)  # the helper converts to network order
        else:
            nfq_nlmsg_verdict_put(out, packet_id, NF_ACCEPT)
            if v.proxied:
                mark |= self.mark_proxied | v.mark | (self.mark_masquerade if v.masquerade else 0)
                nfq_nlmsg_verdict_put_mark(out, mark)
            if not self.offload:  # the offload path's packets go back as they came
                nfq_nlmsg_verdict_put_pkt(out, data, v.length)
        self.tx_length += out.nlmsg_len
