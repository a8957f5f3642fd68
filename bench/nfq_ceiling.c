/* The NFQUEUE ceiling on this machine: accept every packet, as cheaply as NFQUEUE allows.
 *
 * F_GSO (no segmentation before queueing), a large socket buffer, and one batch verdict
 * (NFQNL_MSG_VERDICT_BATCH: "accept everything up to id N") per drained socket. No packet
 * is copied back. Built and run by bench/datapath/ (python -m bench.datapath):
 *     nfq_ceiling QUEUE_NUM [copy]
 * With "copy", it takes whole packets and hands each back unchanged with its own verdict,
 * all verdicts of a drained socket in one send: the ceiling for anything that rewrites
 * packets through NFQUEUE, as nfqproxy must. It stops on SIGTERM or SIGINT.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static volatile sig_atomic_t stopping;

/* A payload handed back is marked CHECKSUM_NONE by the kernel, so a packet that arrived
 * with only its pseudo-header sum (NFQA_SKB_CSUMNOTREADY) must leave with a full L4
 * checksum: what every rewriter pays. */
static void complete_checksum(uint8_t *ip, uint32_t length) {
    if (length < 20 || (ip[0] >> 4) != 4) return;
    uint32_t hl = (ip[0] & 0x0F) * 4, total = (ip[2] << 8) | ip[3];
    uint8_t proto = ip[9];
    if (total > length || total < hl + 8 || (proto != 6 && proto != 17)) return;
    uint32_t l4_length = total - hl, at = proto == 6 ? 16 : 6;
    if (proto == 6 && l4_length < 20) return;
    uint8_t *l4 = ip + hl;
    l4[at] = l4[at + 1] = 0;
    /* 32-bit native words into 64 bits, swapped once at the end (RFC 1071 4.1). */
    uint64_t native = 0;
    uint32_t i = 0, word;
    for (; i + 4 <= l4_length; i += 4) {
        memcpy(&word, l4 + i, 4);
        native += word;
    }
    for (; i + 1 < l4_length; i += 2) {
        uint16_t half;
        memcpy(&half, l4 + i, 2);
        native += half;
    }
    if (i < l4_length) native += l4[i]; /* the odd byte, as the first of a native word */
    while (native >> 16) native = (native & 0xFFFF) + (native >> 16);
    uint64_t sum = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? __builtin_bswap16((uint16_t)native) : native;
    for (int j = 12; j < 20; j += 2) sum += (ip[j] << 8) | ip[j + 1];
    sum += proto + l4_length;
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    uint16_t check = ~sum & 0xFFFF;
    if (proto == 17 && check == 0) check = 0xFFFF;
    l4[at] = check >> 8;
    l4[at + 1] = check & 0xFF;
}

static void stop(int signum) { (void)signum; stopping = 1; }

static int configure(struct mnl_socket *nl, struct nlmsghdr *nlh) {
    char answer[MNL_SOCKET_BUFFER_SIZE];
    nlh->nlmsg_flags |= NLM_F_ACK;
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) return -1;
    int got = mnl_socket_recvfrom(nl, answer, sizeof(answer));
    return got < 0 ? -1 : mnl_cb_run(answer, got, 0, mnl_socket_get_portid(nl), NULL, NULL);
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s QUEUE_NUM [copy]\n", argv[0]);
        return 2;
    }
    uint32_t queue = (uint32_t)strtoul(argv[1], NULL, 10);
    int copy = argc == 3 && strcmp(argv[2], "copy") == 0;
    static char tx[4 * 1024 * 1024];
    size_t tx_length = 0;
    static char buf[0xFFFF + 4096];
    struct mnl_socket *nl = mnl_socket_open(NETLINK_NETFILTER);
    if (nl == NULL || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
        perror("netlink");
        return 1;
    }
    int size = 16 * 1024 * 1024;
    setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
    setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size));

    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND);
    if (configure(nl, nlh) < 0) {
        perror("bind queue");
        return 1;
    }
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    /* Headers are enough to accept; a rewriter needs the whole packet. */
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, copy ? 0xFFFF : 128);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, 8192);
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(NFQA_CFG_F_GSO));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_GSO));
    if (configure(nl, nlh) < 0) {
        perror("configure queue");
        return 1;
    }
    struct sigaction action = {.sa_handler = stop}; /* no SA_RESTART: a signal ends recv */
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    printf("ready\n");
    fflush(stdout);

    int fd = mnl_socket_get_fd(nl);
    while (!stopping) {
        uint32_t last_id = 0;
        int flags = 0; /* block for the first message, then drain without waiting */
        for (;;) {
            ssize_t got = recv(fd, buf, sizeof(buf), flags);
            if (got < 0) break; /* EAGAIN: drained; EINTR: stopping */
            flags = MSG_DONTWAIT;
            int remaining = (int)got;
            for (struct nlmsghdr *msg = (struct nlmsghdr *)buf; mnl_nlmsg_ok(msg, remaining);
                 msg = mnl_nlmsg_next(msg, &remaining)) {
                struct nlattr *attr[NFQA_MAX + 1] = {0};
                if (nfq_nlmsg_parse(msg, attr) < 0 || attr[NFQA_PACKET_HDR] == NULL) continue;
                struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
                last_id = ntohl(ph->packet_id);
                if (copy && attr[NFQA_PAYLOAD] != NULL) {
                    if (attr[NFQA_SKB_INFO] != NULL &&
                        ntohl(mnl_attr_get_u32(attr[NFQA_SKB_INFO])) & NFQA_SKB_CSUMNOTREADY)
                        complete_checksum(mnl_attr_get_payload(attr[NFQA_PAYLOAD]),
                                          mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]));
                    struct nlmsghdr *verdict = nfq_nlmsg_put(tx + tx_length, NFQNL_MSG_VERDICT, queue);
                    nfq_nlmsg_verdict_put(verdict, last_id, NF_ACCEPT);
                    nfq_nlmsg_verdict_put_pkt(verdict, mnl_attr_get_payload(attr[NFQA_PAYLOAD]),
                                              mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]));
                    tx_length += verdict->nlmsg_len;
                    if (tx_length > sizeof(tx) - 0x20000) {
                        mnl_socket_sendto(nl, tx, tx_length);
                        tx_length = 0;
                    }
                }
            }
        }
        if (copy) {
            if (tx_length) mnl_socket_sendto(nl, tx, tx_length);
            tx_length = 0;
            continue;
        }
        if (last_id) {
            char out[256];
            struct nlmsghdr *verdict = nfq_nlmsg_put(out, NFQNL_MSG_VERDICT_BATCH, queue);
            nfq_nlmsg_verdict_put(verdict, last_id, NF_ACCEPT);
            mnl_socket_sendto(nl, verdict, verdict->nlmsg_len);
        }
    }
    mnl_socket_close(nl);
    return 0;
}
