/*
 * tcpbench: the TCP endpoints of the benchmarks (bench/scale/, bench/datapath/), in C so
 * that the measuring tools cost little next to what they measure.
 *
 *   tcpbench serve PORT [PORT...]
 *       accept on every port, send back whatever a client sends, and close each connection
 *       when its client does
 *   tcpbench latency HOST PORT COUNT
 *       COUNT connections one after another; prints the connect() times in microseconds,
 *       one per line (failures as -1)
 *   tcpbench rate HOST PORT SECONDS THREADS [PAUSE_US]
 *       THREADS loops of connect and close for SECONDS, each pausing PAUSE_US between
 *       connections (default 0); prints the connections completed and failed, "ok failed"
 *   tcpbench requests HOST PORT SECONDS THREADS
 *       THREADS loops of short connections for SECONDS: connect, send a 32-byte request, read
 *       the 32-byte answer, close; prints "ok failed reused": the connections completed,
 *       those that failed, and how many of the completed ones had a source port (so a
 *       5-tuple) that an earlier connection of this run had used
 *
 * HOST is an IPv4 or an IPv6 address; `serve` listens on both families (one IPv6 socket
 * per port that takes IPv4 too, where IPv6 is on).
 *
 * Connections are closed with SO_LINGER 0 (an RST), so the client leaves no TIME_WAIT
 * behind and never runs out of ports however many it opens. `requests` binds each
 * connection to the next source port of 1024-65535 in turn, so that no 5-tuple is used twice
 * while a run's connections fit in that range: a SYN that met the conntrack entry of an
 * earlier connection could be carried by that entry's NAT and skip the proxy's decision
 * (a run with the kernel choosing ports showed about 1% of connections doing so). Reuses
 * beyond the range are counted ("reused").
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PORTS 256
#define REQUEST_BYTES 32

static struct sockaddr_storage target; /* IPv4 or IPv6 */
static socklen_t target_length;
static int family;
static double deadline;
static useconds_t pause_us;
static atomic_long completed, failed, reused;
static atomic_uchar port_used[65536]; /* source ports of this run's connections */
static atomic_uint next_port;         /* requests: source ports taken in turn */

#define FIRST_PORT 1024
#define PORT_COUNT (65536 - FIRST_PORT)

/* Binds to the next free source port in turn; 0, or -1 when none of 64 tries is free. */
static int bind_next_port(int fd) {
    struct sockaddr_storage local;
    memset(&local, 0, sizeof(local));
    local.ss_family = (sa_family_t)family;
    for (int tries = 0; tries < 64; tries++) {
        uint16_t port = htons((uint16_t)(FIRST_PORT + atomic_fetch_add(&next_port, 1) % PORT_COUNT));
        if (family == AF_INET6)
            ((struct sockaddr_in6 *)&local)->sin6_port = port;
        else
            ((struct sockaddr_in *)&local)->sin_port = port;
        if (bind(fd, (struct sockaddr *)&local, target_length) == 0)
            return 0;
    }
    return -1;
}

static uint16_t port_of(const struct sockaddr_storage *address) {
    if (address->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)address)->sin6_port);
    return ntohs(((const struct sockaddr_in *)address)->sin_port);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void close_with_reset(int fd) {
    struct linger linger = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
    close(fd);
}

/* One connection; returns its connect() time in seconds, or -1. */
static double connect_once(void) {
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval timeout = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    double started = now();
    int ok = connect(fd, (struct sockaddr *)&target, target_length) == 0;
    double took = now() - started;
    close_with_reset(fd);
    return ok ? took : -1;
}

/* One short connection: connect, a request, its answer, close. Returns 0, or -1. */
static int request_once(void) {
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval timeout = {1, 0};
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int ok = bind_next_port(fd) == 0 &&
             connect(fd, (struct sockaddr *)&target, target_length) == 0;
    if (ok) {
        struct sockaddr_storage local;
        socklen_t length = sizeof(local);
        if (getsockname(fd, (struct sockaddr *)&local, &length) == 0 &&
            atomic_exchange(&port_used[port_of(&local)], 1))
            atomic_fetch_add(&reused, 1);
        char request[REQUEST_BYTES], answer[REQUEST_BYTES];
        memset(request, 'q', sizeof(request));
        ok = send(fd, request, sizeof(request), MSG_NOSIGNAL) == (ssize_t)sizeof(request);
        size_t got = 0;
        while (ok && got < sizeof(answer)) {
            ssize_t n = recv(fd, answer + got, sizeof(answer) - got, 0);
            if (n <= 0)
                ok = 0;
            else
                got += (size_t)n;
        }
    }
    close_with_reset(fd);
    return ok ? 0 : -1;
}

/* Accepts on every port and closes each connection once its client has: closing first
 * would race the client's connect() (a reset that lands before connect returns fails it,
 * and the slower the path, the more often it does). */
static int serve(int count, char **ports) {
    int epoll = epoll_create1(0);
    struct epoll_event event, events[256];
    if (count > MAX_PORTS)
        count = MAX_PORTS;
    for (int i = 0; i < count; i++) {
        /* One IPv6 socket that takes IPv4 too (v4-mapped), so one server serves both
         * families; where IPv6 is off, an IPv4 one. */
        int fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1, zero = 0;
        struct sockaddr_in6 address6 = {.sin6_family = AF_INET6,
                                        .sin6_port = htons(atoi(ports[i])),
                                        .sin6_addr = IN6ADDR_ANY_INIT};
        struct sockaddr_in address4 = {.sin_family = AF_INET, .sin_port = htons(atoi(ports[i]))};
        struct sockaddr *address = (struct sockaddr *)&address6;
        socklen_t length = sizeof(address6);
        if (fd >= 0)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
        else {
            fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            address = (struct sockaddr *)&address4;
            length = sizeof(address4);
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (fd < 0 || bind(fd, address, length) < 0 || listen(fd, 4096) < 0) {
            fprintf(stderr, "tcpbench: cannot listen on port %s: %s\n", ports[i], strerror(errno));
            return 1;
        }
        event.events = EPOLLIN;
        event.data.u64 = (uint64_t)fd << 1 | 1; /* low bit: a listener */
        epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
    }
    for (;;) {
        int ready = epoll_wait(epoll, events, 256, -1);
        if (ready < 0 && errno != EINTR)
            return 1;
        for (int i = 0; i < ready; i++) {
            int fd = (int)(events[i].data.u64 >> 1);
            if (!(events[i].data.u64 & 1)) {
                char buffer[4096];
                ssize_t n = read(fd, buffer, sizeof(buffer));
                if (n > 0) {
                    if (send(fd, buffer, (size_t)n, MSG_NOSIGNAL) == n)
                        continue; /* a request answered: the client closes when it has read */
                } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                    continue;
                }
                close(fd); /* the client closed or reset: readable at EOF or error */
                continue;
            }
            int client;
            while ((client = accept4(fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                event.events = EPOLLIN | EPOLLRDHUP;
                event.data.u64 = (uint64_t)client << 1;
                epoll_ctl(epoll, EPOLL_CTL_ADD, client, &event);
            }
        }
    }
}

static void *requests_loop(void *unused) {
    (void)unused;
    while (now() < deadline) {
        if (request_once() == 0)
            atomic_fetch_add(&completed, 1);
        else
            atomic_fetch_add(&failed, 1);
    }
    return NULL;
}

static void *rate_loop(void *unused) {
    (void)unused;
    while (now() < deadline) {
        if (connect_once() >= 0)
            atomic_fetch_add(&completed, 1);
        else
            atomic_fetch_add(&failed, 1);
        if (pause_us)
            usleep(pause_us);
    }
    return NULL;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN); /* a peer's reset is an error return, never a signal */
    if (argc >= 3 && strcmp(argv[1], "serve") == 0)
        return serve(argc - 2, argv + 2);
    if (argc < 5) {
        fprintf(stderr, "usage: tcpbench serve PORT... | latency HOST PORT COUNT | "
                        "rate HOST PORT SECONDS THREADS [PAUSE_US] | "
                        "requests HOST PORT SECONDS THREADS\n");
        return 2;
    }
    struct sockaddr_in *target4 = (struct sockaddr_in *)&target;
    struct sockaddr_in6 *target6 = (struct sockaddr_in6 *)&target;
    if (inet_pton(AF_INET, argv[2], &target4->sin_addr) == 1) {
        family = AF_INET;
        target4->sin_family = AF_INET;
        target4->sin_port = htons(atoi(argv[3]));
        target_length = sizeof(*target4);
    } else if (inet_pton(AF_INET6, argv[2], &target6->sin6_addr) == 1) {
        family = AF_INET6;
        target6->sin6_family = AF_INET6;
        target6->sin6_port = htons(atoi(argv[3]));
        target_length = sizeof(*target6);
    } else {
        fprintf(stderr, "tcpbench: %s is not an IP address\n", argv[2]);
        return 2;
    }
    if (strcmp(argv[1], "latency") == 0) {
        int count = atoi(argv[4]);
        for (int i = 0; i < count; i++) {
            double took = connect_once();
            printf("%.1f\n", took < 0 ? -1.0 : took * 1e6);
        }
        return 0;
    }
    int requests = strcmp(argv[1], "requests") == 0;
    if ((strcmp(argv[1], "rate") == 0 || requests) && argc >= 6) {
        int threads = atoi(argv[5]);
        pthread_t workers[64];
        if (threads < 1 || threads > 64)
            threads = 1;
        deadline = now() + atof(argv[4]);
        pause_us = argc >= 7 ? (useconds_t)atoi(argv[6]) : 0;
        for (int i = 0; i < threads; i++)
            pthread_create(&workers[i], NULL, requests ? requests_loop : rate_loop, NULL);
        for (int i = 0; i < threads; i++)
            pthread_join(workers[i], NULL);
        if (requests)
            printf("%ld %ld %ld\n", atomic_load(&completed), atomic_load(&failed),
                   atomic_load(&reused));
        else
            printf("%ld %ld\n", atomic_load(&completed), atomic_load(&failed));
        return 0;
    }
    fprintf(stderr, "tcpbench: unknown command %s\n", argv[1]);
    return 2;
}
