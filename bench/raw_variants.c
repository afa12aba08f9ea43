/*
 * raw_variants - the harness's raw_epoll_echo (its src/raw_epoll_echo.c; BENCHMARKS.md,
 * "Method") with knobs, to measure what the kernel charges for how an echo hands its bytes
 * back, with nothing else in the way (BENCHMARKS.md, "Where a 16 KiB echo's bytes go").
 *
 * usage: raw_variants PORT [READ_OFFSET [SEND_OFFSET [MODE]]]
 *   READ_OFFSET  where in the (page-aligned) buffer each recv lands (default 0)
 *   SEND_OFFSET  where the send starts (default 0); the bytes sent are as many as were read,
 *                so an offset other than READ_OFFSET sends shifted (garbage-tailed) bytes:
 *                run wsload without -V
 *   MODE         bit 0: copy what was read into a second buffer and send from there;
 *                bit 1: XOR what was read in place first (an unmasking pass);
 *                bit 2: send with writev in two pieces (4 bytes, then the rest);
 *                bit 3: send with writev in one piece
 * Run by bench/raw_variants.sh. build: gcc -O2 -o raw_variants raw_variants.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define BUF_CAP (256 * 1024)

struct pending {   /* bytes read but not yet written back (only after a partial send) */
    size_t off, len;
    uint8_t data[];
};

static int ep;
static struct pending **pend; /* indexed by fd */
static int pend_cap;

static void drop(int fd)
{
    if (fd < pend_cap && pend[fd]) {
        free(pend[fd]);
        pend[fd] = NULL;
    }
    close(fd);
}

static void watch(int fd, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, op, fd, &ev);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [READ_OFFSET [SEND_OFFSET [MODE]]]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    watch(ls, EPOLLIN, EPOLL_CTL_ADD);
    static uint8_t buf[BUF_CAP + 128] __attribute__((aligned(4096)));
    static uint8_t buf2[BUF_CAP + 128] __attribute__((aligned(4096)));
    size_t roff = argc > 2 ? (size_t)atoi(argv[2]) : 0, soff = argc > 3 ? (size_t)atoi(argv[3]) : 0;
    int mode = argc > 4 ? atoi(argv[4]) : 0;
    if (roff > 128 || soff > 128) {
        fprintf(stderr, "offsets are at most 128\n");
        return 2;
    }
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0)
                        break;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    if (c >= pend_cap) {
                        int nc = c * 2 + 64;
                        pend = realloc(pend, (size_t)nc * sizeof *pend);
                        memset(pend + pend_cap, 0, (size_t)(nc - pend_cap) * sizeof *pend);
                        pend_cap = nc;
                    }
                    watch(c, EPOLLIN, EPOLL_CTL_ADD);
                }
                continue;
            }
            struct pending *p = pend[fd];
            if (p) { /* EPOLLOUT: finish the earlier partial write, then read again */
                ssize_t w = send(fd, p->data + p->off, p->len - p->off, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) {
                    drop(fd);
                    continue;
                }
                if (w > 0)
                    p->off += (size_t)w;
                if (p->off == p->len) {
                    free(p);
                    pend[fd] = NULL;
                    watch(fd, EPOLLIN, EPOLL_CTL_MOD);
                }
                continue;
            }
            ssize_t r = recv(fd, buf + roff, BUF_CAP, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                drop(fd);
                continue;
            }
            uint8_t *out = buf + soff;
            if (mode & 2) { /* an unmasking pass over what was read */
                uint64_t k = 0x0102030405060708ull;
                for (ssize_t j = 0; j + 8 <= r; j += 8) { uint64_t v; memcpy(&v, buf + roff + j, 8); v ^= k; memcpy(buf + roff + j, &v, 8); }
            }
            if (mode & 1) { memcpy(buf2 + soff, buf + roff, (size_t)r); out = buf2 + soff; }
            ssize_t w;
            if (mode & 4) { /* header and payload as two pieces, one writev */
                struct iovec iov[2] = {{out, 4}, {out + 4, (size_t)r - 4}};
                w = writev(fd, iov, 2);
            } else if (mode & 8) { /* one piece, but by writev */
                struct iovec iov[1] = {{out, (size_t)r}};
                w = writev(fd, iov, 1);
            } else {
                w = send(fd, out, (size_t)r, MSG_NOSIGNAL);
            }
            if (w < 0) {
                if (errno != EAGAIN) {
                    drop(fd);
                    continue;
                }
                w = 0;
            }
            if (w < r) {
                p = malloc(sizeof *p + (size_t)(r - w));
                p->off = 0;
                p->len = (size_t)(r - w);
                memcpy(p->data, out + w, p->len);
                pend[fd] = p;
                watch(fd, EPOLLOUT, EPOLL_CTL_MOD);
            }
        }
    }
}
