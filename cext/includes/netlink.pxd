# External C declarations for the fast queue loop: sockets, libmnl, libnetfilter_queue.
from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int socket(int domain, int type, int protocol)
    int bind(int fd, const sockaddr *addr, socklen_t addrlen)
    int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen)
    ssize_t send(int fd, const void *buf, size_t len, int flags)
    ssize_t recv(int fd, void *buf, size_t len, int flags)
    int recvmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout)
    enum:
        AF_NETLINK
        AF_INET
        SOCK_RAW
        SOCK_CLOEXEC
        SOCK_NONBLOCK
        SOL_SOCKET
        SO_RCVBUFFORCE
        SO_SNDBUFFORCE
        SO_RCVTIMEO
        MSG_DONTWAIT
        MSG_WAITFORONE


cdef extern from "<unistd.h>" nogil:
    int close(int fd)


cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    enum:
        F_GETFL
        F_SETFL
        O_NONBLOCK


cdef extern from "<sys/time.h>" nogil:
    struct timeval:
        long tv_sec
        long tv_usec


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR
        ENOBUFS


cdef extern from "<arpa/inet.h>" nogil:
    uint32_t htonl(uint32_t)
    uint32_t ntohl(uint32_t)
    uint16_t ntohs(uint16_t)


cdef extern from "<linux/netlink.h>" nogil:
    struct nlmsghdr:
        uint32_t nlmsg_len
        uint16_t nlmsg_type
        uint16_t nlmsg_flags
        uint32_t nlmsg_seq
        uint32_t nlmsg_pid
    struct sockaddr_nl:
        unsigned short nl_family
        unsigned int nl_pid
        unsigned int nl_groups
    struct nlmsgerr:
        int error
    enum:
        NETLINK_NETFILTER
        NETLINK_NO_ENOBUFS
        SOL_NETLINK
        NLM_F_REQUEST
        NLM_F_ACK
        NLMSG_ERROR


cdef extern from "<libmnl/libmnl.h>" nogil:
    struct nlattr:
        pass
    bint mnl_nlmsg_ok(const nlmsghdr *nlh, int len)
    nlmsghdr *mnl_nlmsg_next(const nlmsghdr *nlh, int *len)
    void *mnl_nlmsg_get_payload(const nlmsghdr *nlh)
    void *mnl_attr_get_payload(const nlattr *attr)
    uint16_t mnl_attr_get_payload_len(const nlattr *attr)
    uint32_t mnl_attr_get_u32(const nlattr *attr)
    void mnl_attr_put_u32(nlmsghdr *nlh, uint16_t type, uint32_t data)


cdef extern from "<libnetfilter_queue/libnetfilter_queue.h>" nogil:
    nlmsghdr *nfq_nlmsg_put(char *buf, int type, uint32_t queue_num)
    void nfq_nlmsg_cfg_put_cmd(nlmsghdr *nlh, uint16_t pf, uint8_t cmd)
    void nfq_nlmsg_cfg_put_params(nlmsghdr *nlh, uint8_t mode, int range)
    void nfq_nlmsg_cfg_put_qmaxlen(nlmsghdr *nlh, uint32_t qmaxlen)
    void nfq_nlmsg_verdict_put(nlmsghdr *nlh, int id, int verdict)
    void nfq_nlmsg_verdict_put_mark(nlmsghdr *nlh, uint32_t mark)
    void nfq_nlmsg_verdict_put_pkt(nlmsghdr *nlh, const void *pkt, uint32_t pktlen)
    int nfq_nlmsg_parse(const nlmsghdr *nlh, nlattr **attr)


cdef extern from "<libnetfilter_queue/linux_nfnetlink_queue.h>" nogil:
    struct nfqnl_msg_packet_hdr:
        uint32_t packet_id
        uint16_t hw_protocol
        uint8_t hook
    enum:
        NFQNL_MSG_VERDICT
        NFQNL_MSG_CONFIG
        NFQNL_CFG_CMD_BIND
        NFQNL_CFG_CMD_UNBIND
        NFQNL_COPY_PACKET
        NFQA_MAX
        NFQA_PACKET_HDR
        NFQA_MARK
        NFQA_PAYLOAD
        NFQA_CAP_LEN
        NFQA_SKB_INFO
        NFQA_CFG_MASK
        NFQA_CFG_FLAGS
        NFQA_CFG_F_GSO
        NFQA_CFG_F_FAIL_OPEN
        NFQA_SKB_CSUMNOTREADY


cdef extern from "<linux/netfilter.h>" nogil:
    enum:
        NF_DROP
        NF_ACCEPT


cdef extern from "<linux/netfilter/nfnetlink.h>" nogil:
    enum:
        NFNL_SUBSYS_QUEUE


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC
    int clock_gettime(int clk_id, timespec *tp)
