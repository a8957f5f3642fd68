/* The NFQUEUE ceiling on this machine: accept every packet, as cheaply as NFQUEUE allows.
 *
 * F_GSO (no segmentation before queueing), a large socket buffer, and one batch verdict
 * (NFQNL_MSG_VERDICT_BATCH: "accept everything up to id N") per drained socket. No packet
 * is copied back. Built and run by bench/datapath.py:
 *     nfq_ceiling QUEUE_NUM
 * It stops on SIGTERM or SIGINT.
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

static void stop(int signum) { (void)signum; stopping = 1; }

static int configure(struct mnl_socket *nl, struct nlmsghdr *nlh) {
    char answer[MNL_SOCKET_BUFFER_SIZE];
    nlh->nlmsg_flags |= NLM_F_ACK;
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) return -1;
    int got = mnl_socket_recvfrom(nl, answer, sizeof(answer));
    return got < 0 ? -1 : mnl_cb_run(answer, got, 0, mnl_socket_get_portid(nl), NULL, NULL);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s QUEUE_NUM\n", argv[0]);
        return 2;
    }
    uint32_t queue = (uint32_t)strtoul(argv[1], NULL, 10);
    static char buf[0xFFFF + 4096];
    struct mnl_socket *nl = mnl_socket_open(NETLINK_NETFILTER);
    if (nl == NULL || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
        perror("netlink");
        return 1;
    }
    int size = 16 * 1024 * 1024;
    setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));

    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND);
    if (configure(nl, nlh) < 0) {
        perror("bind queue");
        return 1;
    }
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 128); /* headers are enough to accept */
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
            }
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
