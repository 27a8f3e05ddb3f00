/*
 * The relay step a TCP gateway repeats, measured three ways on loopback: move one S-byte message that
 * has arrived on socket B to socket C, where it is read off socket D (A -> B relay C -> D).
 *
 *   copy     io_uring recv into a buffer, then io_uring send of it (what keel-gateway does)
 *   uring    io_uring splice B -> pipe, linked to io_uring splice pipe -> C
 *   splice   splice(2) B -> pipe, then splice(2) pipe -> C, non-blocking (what HAProxy's splice does)
 *
 * Prints the process's CPU time per relayed message (every thread, io_uring's workers included) for
 * the relay step alone: the message is written to A and read from D outside the measured span.
 *
 *   cc -O2 -I Sources/CKeelLinux/include Benchmarks/splice-relay/relay-step.c Sources/CKeelLinux/shim.c -o relay-step
 *   ./relay-step copy|uring|splice SIZE COUNT
 */
#define _GNU_SOURCE 1
#include "CKeelLinux.h"
#include <fcntl.h>
#include <sys/ioctl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <time.h>

static int ring_fd;
static struct io_uring_sqe *sqes;
static unsigned *sq_tail, *sq_head, sq_mask, *cq_head, *cq_tail, cq_mask, local_tail;
static struct io_uring_cqe *cqes;

static void ring_setup(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    ring_fd = ckeel_io_uring_setup(64, &p);
    if (ring_fd < 0) { perror("io_uring_setup"); exit(1); }
    size_t ring_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (cq_size > ring_size) ring_size = cq_size;
    char *ring = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQ_RING);
    sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
                IORING_OFF_SQES);
    sq_head = (unsigned *)(ring + p.sq_off.head);
    sq_tail = (unsigned *)(ring + p.sq_off.tail);
    sq_mask = *(unsigned *)(ring + p.sq_off.ring_mask);
    unsigned *array = (unsigned *)(ring + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++) array[i] = i;
    cq_head = (unsigned *)(ring + p.cq_off.head);
    cq_tail = (unsigned *)(ring + p.cq_off.tail);
    cq_mask = *(unsigned *)(ring + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(ring + p.cq_off.cqes);
    local_tail = *sq_tail;
}

static struct io_uring_sqe *get_sqe(void) {
    struct io_uring_sqe *sqe = &sqes[local_tail++ & sq_mask];
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

/* Submits what is queued and waits for `count` completions; returns the last one's result. */
static int submit_and_wait(unsigned count) {
    ckeel_store_release(sq_tail, local_tail);
    unsigned pending = local_tail - ckeel_load_acquire(sq_head);
    int last = 0;
    while (count > 0) {
        int rc = ckeel_io_uring_enter(ring_fd, pending, 1, IORING_ENTER_GETEVENTS, NULL, 0);
        if (rc < 0 && errno != EINTR) { perror("io_uring_enter"); exit(1); }
        pending = 0;
        unsigned head = *cq_head, tail = ckeel_load_acquire(cq_tail);
        for (; head != tail && count > 0; head++, count--) last = cqes[head & cq_mask].res;
        ckeel_store_release(cq_head, head);
    }
    return last;
}

static void prep_splice(struct io_uring_sqe *sqe, int in, int out, unsigned len, unsigned flags) {
    sqe->opcode = IORING_OP_SPLICE;
    sqe->fd = out;
    sqe->splice_fd_in = in;
    sqe->splice_off_in = (uint64_t)-1;
    sqe->off = (uint64_t)-1;
    sqe->len = len;
    sqe->splice_flags = SPLICE_F_MOVE;
    sqe->flags = (uint8_t)flags;
}

static void connected_pair(int listener, struct sockaddr_in *addr, int *client, int *server) {
    *client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(*client, (struct sockaddr *)addr, sizeof(*addr)) != 0) { perror("connect"); exit(1); }
    *server = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    int one = 1;
    setsockopt(*client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(*server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void full_io(int fd, char *buffer, size_t size, int reading) {
    size_t done = 0;
    while (done < size) {
        ssize_t n = reading ? recv(fd, buffer + done, size - done, 0) : send(fd, buffer + done, size - done, MSG_NOSIGNAL);
        if (n <= 0) { perror(reading ? "recv" : "send"); exit(1); }
        done += (size_t)n;
    }
}

static double process_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: relay-step copy|uring|splice SIZE COUNT\n"); return 2; }
    const char *mode = argv[1];
    size_t size = (size_t)atol(argv[2]);
    long count = atol(argv[3]);
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(addr);
    if (bind(listener, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(listener, 16) != 0) { perror("listen"); return 1; }
    getsockname(listener, (struct sockaddr *)&addr, &len);
    int a, b, c, d;
    connected_pair(listener, &addr, &a, &b);
    connected_pair(listener, &addr, &c, &d);
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) != 0) { perror("pipe2"); return 1; }
    fcntl(pipefd[0], F_SETPIPE_SZ, 1 << 20);
    ring_setup();
    char *message = malloc(size), *relay = malloc(size), *sink = malloc(size);
    memset(message, 'k', size);
    double measured = 0;
    for (long i = 0; i < count; i++) {
        full_io(a, message, size, 0);
        /* Wait until all of it is in B's receive queue, so every mode moves a whole message at once. */
        int queued = 0;
        do { ioctl(b, FIONREAD, &queued); } while ((size_t)queued < size);
        double start = process_cpu_ns();
        size_t moved = 0;
        while (moved < size) {
            size_t want = size - moved;
            if (strcmp(mode, "copy") == 0) {
                ckeel_sqe_recv(get_sqe(), b, relay, (uint32_t)want, 0, 1);
                int got = submit_and_wait(1);
                if (got <= 0) { fprintf(stderr, "recv %d\n", got); return 1; }
                for (int sent = 0; sent < got;) {
                    ckeel_sqe_send(get_sqe(), c, relay + sent, (uint32_t)(got - sent), MSG_NOSIGNAL, 2);
                    int n = submit_and_wait(1);
                    if (n <= 0) { fprintf(stderr, "send %d\n", n); return 1; }
                    sent += n;
                }
                moved += (size_t)got;
            } else if (strcmp(mode, "uring") == 0) {
                prep_splice(get_sqe(), b, pipefd[1], (uint32_t)want, IOSQE_IO_LINK);
                prep_splice(get_sqe(), pipefd[0], c, (uint32_t)want, 0);
                int n = submit_and_wait(2);
                if (n <= 0) { fprintf(stderr, "splice %d\n", n); return 1; }
                moved += (size_t)n;
            } else {
                ssize_t in = splice(b, NULL, pipefd[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (in <= 0) { perror("splice in"); return 1; }
                for (ssize_t out = 0; out < in;) {
                    ssize_t n = splice(pipefd[0], NULL, c, NULL, (size_t)(in - out), SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                    if (n <= 0) { perror("splice out"); return 1; }
                    out += n;
                }
                moved += (size_t)in;
            }
        }
        measured += process_cpu_ns() - start;
        full_io(d, sink, size, 1);
    }
    printf("%s %zu %.0f\n", mode, size, measured / (double)count);
    return 0;
}
