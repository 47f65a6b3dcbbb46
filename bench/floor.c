/* The least a reverse proxy can do per request, as a floor to measure proxies against.
 *
 * Not a proxy anyone should run: it reads a client's request and writes its bytes unchanged
 * to a pooled keep-alive connection to the next target (round robin), reads the response and
 * writes its bytes unchanged to the client, and pools the upstream connection again once the
 * response's Content-Length bytes have passed. No header is read or written beyond that
 * length, no pipelining, no timeouts, nothing buffered beyond one read. What it costs is
 * almost all the kernel's: the same four system calls per request as a real proxy (a read and
 * a write on each side) and one epoll_wait per batch of ready sockets, on the same sockets.
 * `bench/run.py --scale` runs it in front of 1 and of 1 000 targets, so the kernel's share of
 * what a wider upstream costs shows apart from the proxy's own.
 *
 * Usage: floor LISTEN_PORT FIRST_TARGET_PORT NTARGETS (all on 127.0.0.1).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536
#define BUF 16384

enum kind { FREE, LISTENER, CLIENT, UPSTREAM };

struct conn {
    enum kind kind;
    int peer;      /* client: its upstream while a request is out (-1 if none); upstream: its client */
    int target;    /* upstream: its target */
    int next_idle; /* upstream: the next idle connection of its target (-1: none) */
    long left;     /* upstream: bytes of the response still to come (-1: head not seen yet) */
};

static struct conn conns[MAX_FD];
static int *idle;  /* per target: the first idle connection (-1: none) */
static int ep;
static char buf[BUF];

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void watch(int fd, enum kind kind) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (fd >= MAX_FD) {
        fprintf(stderr, "descriptor %d above %d\n", fd, MAX_FD);
        exit(1);
    }
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    conns[fd] = (struct conn){.kind = kind, .peer = -1, .target = -1, .next_idle = -1, .left = -1};
}

static void drop(int fd) {
    if (fd < 0 || conns[fd].kind == FREE) return;
    if (conns[fd].kind == UPSTREAM && conns[fd].peer < 0) { /* idle: off its target's list */
        for (int *at = &idle[conns[fd].target]; *at >= 0; at = &conns[*at].next_idle) {
            if (*at == fd) {
                *at = conns[fd].next_idle;
                break;
            }
        }
    }
    conns[fd].kind = FREE;
    close(fd);
}

/* The sockets are blocking (only the listener is not): a write that does not fit in the
 * socket buffer stalls the whole loop, which is beyond this floor (small bodies only). */
static int write_all(int fd, const char *p, long n) {
    while (n > 0) {
        long w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= w;
    }
    return 0;
}

static int upstream(int target, int first_port) {
    int fd = idle[target];
    if (fd >= 0) {
        idle[target] = conns[fd].next_idle;
        return fd;
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(first_port + target)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* A blocking connect on loopback: done once per pooled connection, off the measured path. */
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    watch(fd, UPSTREAM);
    conns[fd].target = target;
    return fd;
}

/* The bytes of the response still to come after this first read (-1 if its head is not whole). */
static long remaining(const char *p, long n) {
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) return -1;
    long head = end + 4 - p, length = 0;
    for (const char *l = p; l < end; l++) {
        if (*l == '\n' && strncasecmp(l + 1, "content-length:", 15) == 0) {
            length = strtol(l + 16, NULL, 10);
            break;
        }
    }
    return head + length - n;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: floor LISTEN_PORT FIRST_TARGET_PORT NTARGETS\n");
        return 2;
    }
    int port = atoi(argv[1]), first = atoi(argv[2]), targets = atoi(argv[3]);
    if (targets < 1) return 2;
    idle = malloc(sizeof(int) * targets);
    if (!idle) die("malloc");
    for (int i = 0; i < targets; i++) idle[i] = -1;
    ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) die("listen");
    watch(lfd, LISTENER);
    unsigned long turn = 0;
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            struct conn *c = &conns[fd];
            if (c->kind == LISTENER) {
                int cfd;
                while ((cfd = accept4(lfd, NULL, NULL, 0)) >= 0) {
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    watch(cfd, CLIENT);
                }
            } else if (c->kind == CLIENT) {
                long r = read(fd, buf, BUF);
                if (r <= 0) {
                    drop(c->peer);
                    drop(fd);
                    continue;
                }
                int target = turn++ % targets;
                int up = upstream(target, first);
                if (up < 0 || write_all(up, buf, r) < 0) {
                    drop(up);
                    drop(fd);
                    continue;
                }
                c->peer = up;
                conns[up].peer = fd;
                conns[up].left = -1;
            } else if (c->kind == UPSTREAM) {
                long r = read(fd, buf, BUF);
                int client = c->peer;
                if (r <= 0 || client < 0) {
                    drop(client);
                    drop(fd);
                    continue;
                }
                /* A head split over reads is beyond this floor (small heads only). */
                c->left = c->left < 0 ? remaining(buf, r) : c->left - r;
                if (c->left < 0 || write_all(client, buf, r) < 0) {
                    drop(client);
                    drop(fd);
                    continue;
                }
                if (c->left == 0) {
                    conns[client].peer = -1;
                    c->peer = -1;
                    c->next_idle = idle[c->target];
                    idle[c->target] = fd;
                }
            }
        }
    }
}
